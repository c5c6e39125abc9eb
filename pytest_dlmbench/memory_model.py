"""An analytic peak-memory estimate per point, to set beside the measurement and to predict
where a point would run out of memory on cards that are not present.

    peak = weights + batch * max over phases of (KV cache + one layer's KV copy + activations + logits)

- weights: the parameter count (exact, from the shapes) x dtype bytes (every expert's);
- KV cache: cached positions x 2 (K, V) x layers x KV heads x head dim x dtype bytes; while a
  DynamicCache grows (the eager runtime), one layer exists twice for a moment (the concatenation
  copy), which a forward that fills an empty cache does not make, nor the graphs runtime's
  static slots (its forwards above CAPTURE_MAX_TOKENS run uncaptured, so their activations and
  logits are freed as eager's are);
- activations: tokens in the forward x (4 x hidden + 3 x FFN) x dtype bytes (residual stream,
  attention input/output and the MLP's gate, up and activated tensors alive together);
- logits: positions whose logits are computed x vocab x dtype bytes, alive with the last
  activations; after the forward, when the activations are gone, scoring adds per softmax row and
  vocab entry its `scoring_bytes` (a float32 copy and its softmax: 8; the published float64 path:
  16, or 40 with its float64 Gumbel noise; a softmax in the logits' dtype: their size;
  paradigms/scoring.py): the larger of the two stages counts.
Each paradigm names its phases (cached positions, forward tokens, logit positions) in
`memory_phases()`. The estimate ignores allocator rounding and fragmentation and the CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_dlmbench.models import QK_NORM_FAMILIES, QKV_BIAS_FAMILIES, ModelSpec

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
CARDS_GIB = (24, 40, 48, 80)


@dataclass(frozen=True)
class Phase:
    """One stage of a generation, per sequence."""

    cached_positions: int
    forward_tokens: int
    logit_positions: int
    cache_grows: bool = True  # appends to a cache (one layer copied); False: fills an empty one
    softmax_positions: int | None = None  # rows the scoring's softmax runs over (None: the logit positions)
    # scoring memory per softmax row and vocab entry beyond the logits (None: dtype bytes)
    scoring_bytes: int | None = 8


def expert_parameters(spec: ModelSpec) -> int:
    """Parameters of one layer's experts together (0 for a dense MLP)."""
    return 3 * spec.hidden_size * spec.intermediate_size * spec.num_experts if spec.num_experts else 0


def parameter_count(spec: ModelSpec) -> int:
    """Exact parameter count of the architecture (one table where embeddings are tied; Qwen2 has q/k/v biases,
    Qwen3 per-head q/k norms; a mixture of experts its experts and router)."""
    h, d, layers = spec.hidden_size, spec.head_dim, spec.num_layers
    q, kv = spec.num_heads * d, spec.num_kv_heads * d
    attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if spec.family in QKV_BIAS_FAMILIES else 0) + (
        2 * d if spec.family in QK_NORM_FAMILIES else 0)
    mlp = expert_parameters(spec) + h * spec.num_experts if spec.num_experts else 3 * h * spec.intermediate_size
    return (1 if spec.tied_embeddings else 2) * spec.vocab_size * h + layers * (attention + mlp + 2 * h) + h


def experts_touched(spec: ModelSpec, tokens: int) -> float:
    """Experts per layer whose weights a forward of `tokens` tokens reads, expected under uniform
    routing: E (1 - (1 - k / E)^tokens); every one of a dense MLP's."""
    if not spec.num_experts:
        return 1.0
    experts, chosen = spec.num_experts, spec.experts_per_token or 1
    return experts * (1 - (1 - chosen / experts) ** tokens)


def predicted_peak_bytes(spec: ModelSpec, phases: list[Phase], batch_size: int, dtype: str,
                         concatenating: bool = True) -> int:
    """`concatenating`: the runtime's cache grows by concatenation (runtimes/: `concatenates`)."""
    size = DTYPE_BYTES[dtype]
    layer_kv = 2 * spec.num_kv_heads * spec.head_dim * size  # bytes per cached position and layer
    per_sequence = max(
        phase.cached_positions * layer_kv * (spec.num_layers + (phase.cache_grows and concatenating))
        + phase.logit_positions * spec.vocab_size * size
        + max(  # in the forward: activations; after it: scoring
            phase.forward_tokens * (4 * spec.hidden_size + 3 * spec.active_intermediate_size) * size,
            (size if phase.scoring_bytes is None else phase.scoring_bytes) * spec.vocab_size
            * (phase.logit_positions if phase.softmax_positions is None else phase.softmax_positions),
        )
        for phase in phases
    )
    return parameter_count(spec) * size + batch_size * per_sequence


def predicted_max_batch(spec: ModelSpec, phases: list[Phase], dtype: str, memory_bytes: int, concatenating: bool = True,
                        limit: int = 1 << 20) -> int:
    """The largest batch whose predicted peak fits in `memory_bytes` (0 if none)."""
    low, high = 0, limit + 1
    while high - low > 1:
        middle = (low + high) // 2
        if predicted_peak_bytes(spec, phases, middle, dtype, concatenating) <= memory_bytes:
            low = middle
        else:
            high = middle
    return low
