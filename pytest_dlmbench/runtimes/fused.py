"""The graphs runtime's decoder layer (Llama, Qwen2 and Qwen3 families): three steps around attention.

transformers runs a layer as 7 GEMMs and ~25 small elementwise kernels (RMSNorm's upcast, RoPE's
slice/neg/cat, SiLU, residual adds); at batch 1 their launches and gaps cost as much as a third
of the weight read. Here a layer is `project` (RMSNorm, one GEMM for q, k and v, RoPE;
`project_into` also writes k and v into the cache), the runtime's attention, `post_attention`
(output projection, residual, RMSNorm, one GEMM for gate and up, SiLU·mul) and `down_project`
(down projection, residual). On CUDA torch.compile turns each step's elementwise work into a few
Triton kernels (the GEMMs stay cuBLAS, except the output and down projections at one token: see
`gemv`); attention stays outside the compiled code, on the runtime's fused kernels, where the
math-fallback check sees it. The q/k/v and gate/up weights are joined once per model and
transformers' modules keep views of them, so eager runs on the same memory.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_dlmbench.device import release
from pytest_dlmbench.integrations.transformers import replaced_forwards

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

RECOMPILE_LIMIT = 64  # versions of a compiled step: 16 (model, dtype) pairs
# (query (B, n, H, D), key, value (B, k, KVH, D), mask, scale, is_causal) -> (B, n, H, D)
Attend = Callable[..., "torch.Tensor"]


# The transformers families whose decoder layer these steps implement, and the modules they read;
# any other family or module is refused by name (`unsupported`), never run without its part.
FAMILIES = ("llama", "qwen2", "qwen3")
LAYER_PARTS = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
ATTENTION_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "rotary_fn"}
MLP_PARTS = {"gate_proj", "up_proj", "down_proj", "act_fn"}


class UnsupportedArchitecture(ValueError):
    """A model the fused steps do not implement (they would run it without its missing part)."""


def unsupported(config: Any, model: PreTrainedModel | None = None) -> list[str]:
    """What of this architecture the fused steps do not implement: from its config alone, and with
    `model` from its modules too (a part of a layer, an unexpected bias). Empty: it runs."""
    problems = []
    if config.model_type not in FAMILIES:
        problems.append(f"model_type {config.model_type!r} (implemented: {', '.join(FAMILIES)})")
    if getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None):
        problems.append("mixture-of-experts MLPs")
    if config.hidden_act != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (implemented: silu)")
    sliding = [kind for kind in getattr(config, "layer_types", None) or () if kind != "full_attention"]
    if sliding or getattr(config, "use_sliding_window", False):
        problems.append("sliding-window attention layers")
    if model is None:
        return problems
    layer = model.get_decoder().layers[0]
    for owner, module, known in (("layer", layer, LAYER_PARTS), ("self_attn", layer.self_attn, ATTENTION_PARTS),
                                 ("mlp", layer.mlp, MLP_PARTS)):
        extra = sorted({name for name, _ in module.named_children()} - known)
        if extra:
            problems.append(f"{owner} parts {', '.join(extra)} ({type(module).__name__})")
    for index, layer in enumerate(model.get_decoder().layers if not problems else ()):
        biased = [name for name, linear in (("o_proj", layer.self_attn.o_proj), ("gate_proj", layer.mlp.gate_proj),
                                            ("up_proj", layer.mlp.up_proj), ("down_proj", layer.mlp.down_proj))
                  if linear.bias is not None]
        if biased:
            problems.append(f"layer {index}'s bias on {', '.join(biased)} (implemented: biases on q_proj, k_proj "
                            "and v_proj only)")
    return problems


def check_architecture(config: Any, model: PreTrainedModel | None = None) -> None:
    problems = unsupported(config, model)
    if problems:
        name = getattr(config, "name_or_path", "") or config.model_type
        raise UnsupportedArchitecture(f"the graphs runtime does not implement {name}'s {'; '.join(problems)}: "
                                      "run it with --dlm-runtime=eager")


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer's tensors, as the fused steps read them."""

    index: int
    input_norm: torch.Tensor  # (hidden,)
    post_norm: torch.Tensor  # (hidden,)
    eps: float
    qkv: torch.Tensor  # ((H + 2 KVH) D, hidden)
    qkv_bias: torch.Tensor | None  # ((H + 2 KVH) D,) (Qwen2)
    sizes: tuple[int, int, int]  # q, k, v rows of `qkv`
    head_dim: int
    scaling: float
    out: torch.Tensor  # (hidden, H D)
    gate_up: torch.Tensor  # (2 I, hidden)
    down: torch.Tensor  # (hidden, I)
    q_norm: torch.Tensor | None = None  # (D,) per-head RMSNorm of q before RoPE (Qwen3)
    k_norm: torch.Tensor | None = None  # (D,) likewise of k


_JOINED: weakref.WeakKeyDictionary[Any, list[LayerWeights]] = weakref.WeakKeyDictionary()


def layer_weights(model: PreTrainedModel) -> list[LayerWeights]:
    """The model's layers with joined q/k/v and gate/up weights (joined once per model); an
    architecture the steps do not implement is refused (UnsupportedArchitecture)."""
    decoder = model.get_decoder()
    if decoder not in _JOINED:
        check_architecture(model.config, model)
        _JOINED[decoder] = [_join(index, layer) for index, layer in enumerate(decoder.layers)]
        release(model.device)  # the replaced weights' blocks, which the joined ones do not fit
    return _JOINED[decoder]


def _join(index: int, layer: Any) -> LayerWeights:
    attention, mlp = layer.self_attn, layer.mlp
    qkv, qkv_bias = _joined(attention.q_proj, attention.k_proj, attention.v_proj)
    gate_up, _ = _joined(mlp.gate_proj, mlp.up_proj)
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    return LayerWeights(
        index, layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
        layer.input_layernorm.variance_epsilon, qkv, qkv_bias,
        (attention.q_proj.out_features, attention.k_proj.out_features, attention.v_proj.out_features),
        attention.head_dim, attention.scaling, attention.o_proj.weight, gate_up, mlp.down_proj.weight,
        q_norm.weight if q_norm is not None else None, k_norm.weight if k_norm is not None else None)


def _joined(*linears: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for linears that read the same input; each module is left holding a
    view of its rows, so the model's memory does not grow."""
    import torch

    rows = [linear.out_features for linear in linears]
    with torch.no_grad():
        weight = torch.cat([linear.weight for linear in linears])  # (sum rows, in)
        bias = torch.cat([linear.bias for linear in linears]) if linears[0].bias is not None else None
        for linear, rows_weight in zip(linears, weight.split(rows)):
            linear.weight = torch.nn.Parameter(rows_weight, requires_grad=False)
        if bias is not None:
            for linear, rows_bias in zip(linears, bias.split(rows)):
                linear.bias = torch.nn.Parameter(rows_bias, requires_grad=False)
    return weight, bias


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, n, in) @ weight (out, in).T -> (B, n, out), for the output and down projections.

    At one token, under torch.compile, as a product summed over `in`: Inductor makes it one
    reduction kernel, which also takes the residual add after it. On the H200 that read llama's
    4096 x 4096 output weight in 11.8 us and its 4096 x 14336 down weight in 28.7 us, where
    cuBLAS took 12.7 and 31.3 (with its split-K reduce); for q/k/v and gate/up cuBLAS was faster,
    16.4 against 17.1 and 61.1 against 69.5 us (results/graph-runtime/h200/decode-attention-2.txt).
    Only on a step's input, which is a buffer already: Inductor inlines a producer computed in the
    step (RMSNorm, SiLU·mul) into the reduction and recomputes it for every block of rows, which
    made gate/up 90 us and down 57 us a layer on the H100 (split-kv/profile-all-reductions.txt);
    hence `down_project` is a step of its own. Uncompiled, the product would be materialised, so
    F.linear."""
    import torch
    import torch.nn.functional as F

    if not (torch.compiler.is_compiling() and x.shape[0] * x.shape[1] == 1):
        return F.linear(x, weight)
    return torch.sum(weight.float() * x.float().unsqueeze(-2), dim=-1).to(x.dtype)  # (1, 1, out)


def project(x: torch.Tensor, weights: LayerWeights, cos: torch.Tensor,
            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, n, hidden), cos/sin (1|B, n, D) -> rotated q (B, n, H, D), rotated k and v (B, n, KVH, D).

    Heads stay after positions, as the GEMM wrote them: a rotation that also transposed made
    Inductor's RoPE kernel 20x slower at 1176 positions."""
    import torch.nn.functional as F

    batch, n, _ = x.shape
    normed = F.rms_norm(x, (x.shape[-1],), weights.input_norm, weights.eps)
    q, k, v = F.linear(normed, weights.qkv, weights.qkv_bias).split(weights.sizes, dim=-1)
    q, k, v = (part.view(batch, n, -1, weights.head_dim) for part in (q, k, v))
    if weights.q_norm is not None:  # Qwen3: each head's q and k RMS-normed before RoPE
        q = F.rms_norm(q, (weights.head_dim,), weights.q_norm, weights.eps)
        k = F.rms_norm(k, (weights.head_dim,), weights.k_norm, weights.eps)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # (1|B, n, 1, D)
    return rotate(q, cos, sin), rotate(k, cos, sin), v


def project_into(x: torch.Tensor, weights: LayerWeights, cos: torch.Tensor, sin: torch.Tensor, keys: torch.Tensor,
                 values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """`project`, with k and v written into a cache's keys/values (B, slots, KVH, D) at `slots` (n,)
    -> q. Compiled, the writes join RoPE's kernel instead of costing two index_copy_ kernels."""
    q, k, v = project(x, weights, cos, sin)
    keys.index_copy_(1, slots, k)
    values.index_copy_(1, slots, v)
    return q


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as transformers applies it: x cos + rotate_half(x) sin."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def post_attention(x: torch.Tensor, attended: torch.Tensor,
                   weights: LayerWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, n, hidden), attended (B, n, H, D) -> the residual stream after attention (B, n, hidden)
    and the MLP's SiLU(gate) * up (B, n, I)."""
    import torch.nn.functional as F

    x = x + gemv(attended.flatten(2), weights.out)
    normed = F.rms_norm(x, (x.shape[-1],), weights.post_norm, weights.eps)
    gate, up = F.linear(normed, weights.gate_up).chunk(2, dim=-1)  # (B, n, I) each
    return x, F.silu(gate) * up


def down_project(x: torch.Tensor, hidden: torch.Tensor, weights: LayerWeights) -> torch.Tensor:
    """x (B, n, hidden), hidden (B, n, I) -> the layer's output x + down(hidden) (B, n, hidden)."""
    return x + gemv(hidden, weights.down)


class Steps(NamedTuple):
    """A layer's steps, compiled or as written."""

    project: Callable[..., Any]
    project_into: Callable[..., Any]
    post_attention: Callable[..., Any]
    down_project: Callable[..., Any]


AS_WRITTEN = Steps(project, project_into, post_attention, down_project)


@functools.cache
def compiled_steps() -> Steps:
    """The steps compiled once per model shape: batch and length are symbolic (where
    not 1), the weights' shapes static, so Inductor's kernels index by constants.

    Each (model, dtype) adds up to four versions of each step (batch and length each 1 or not),
    so a session of several models raises dynamo's recompile limit above its default of 8.
    Inductor's combo kernels launch a step's independent kernels as one (RoPE of q, RoPE and the
    cache write of k, the write of v: three kernels became one), which took llama's batch-1 decode
    step from 4.74 to 4.67 ms on the H200 (results/graph-runtime/h200/decode-attention-2.txt)."""
    import torch

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)

    def token_dims_dynamic(step: Callable[..., Any]) -> Callable[..., Any]:
        compiled = torch.compile(step, dynamic=False, fullgraph=True, options={"combo_kernels": True})

        def run(x: torch.Tensor, *args: Any) -> Any:
            for tensor in (x, *(arg for arg in args if isinstance(arg, torch.Tensor))):  # (B, n | slots, ...), (n,)
                for dim in range(min(tensor.dim(), 2)):
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
            return compiled(x, *args)

        return run

    return Steps(*(token_dims_dynamic(step) for step in AS_WRITTEN))


def layer_forward(weights: LayerWeights, steps: Steps, attend: Attend,
                  hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                  window_mask: torch.Tensor | None = None, is_causal: bool = False, **kwargs: Any) -> torch.Tensor:
    """A decoder layer's forward as transformers calls it; the cache (the graphs runtime's) arrives
    as `cache` or, in transformers before 5.40's rename, `past_key_values`."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None:
        q, k, v = steps.project(hidden_states, weights, *position_embeddings)
    else:
        q = steps.project_into(hidden_states, weights, *position_embeddings, cache.keys[weights.index],
                               cache.values[weights.index], cache.slots)
        k, v = cache.window_of(weights.index)
    x, hidden = steps.post_attention(hidden_states, attend(q, k, v, window_mask, weights.scaling, is_causal), weights)
    return steps.down_project(x, hidden, weights)


@contextmanager
def fused_layers(model: PreTrainedModel, attend: Attend, compiled: bool) -> Iterator[None]:
    """Inside the block, the model's decoder layers run as the three steps above."""
    steps = compiled_steps() if compiled else AS_WRITTEN
    forwards = [functools.partial(layer_forward, weights, steps, attend) for weights in layer_weights(model)]
    with replaced_forwards(model.get_decoder().layers, forwards):
        yield
