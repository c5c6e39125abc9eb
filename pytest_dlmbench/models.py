"""Model shapes by name, built with random weights or loaded from a local checkpoint.

Speed and memory depend on shapes, not on weight values, so the default is a model built
from the exact published configuration with seeded random weights; real weights are only
ever read from a local directory the user names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


class ModelError(ValueError):
    """A model name, checkpoint or shape request that cannot be honoured."""


# transformers families whose parameters the analytic models (memory_model.py, roofline.py) count
# exactly: Llama's layer, plus Qwen2's q/k/v biases and Qwen3's per-head q/k RMSNorm.
QKV_BIAS_FAMILIES = ("qwen2", "qwen2_moe")
QK_NORM_FAMILIES = ("qwen3", "qwen3_moe")
# config.json keys that a spec's own fields hold; the rest of a config goes into `extra`
_OWN_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
             "intermediate_size", "moe_intermediate_size", "vocab_size", "rope_theta", "rope_parameters",
             "rope_scaling", "max_position_embeddings", "rms_norm_eps", "eos_token_id", "num_experts",
             "num_local_experts", "num_experts_per_tok", "tie_word_embeddings", "architectures", "auto_map",
             "torch_dtype", "dtype", "transformers_version", "pad_token_id", "bos_token_id")


@dataclass(frozen=True)
class ModelSpec:
    """The exact architecture of one named model, and what its decoder needs to know."""

    name: str
    paradigm: str  # the decoding paradigm the model was trained for
    family: str  # the transformers model_type that implements it ("llama", "qwen2", "qwen3", "qwen3_moe", ...)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # the MLP's width; of one expert where the model is a mixture of experts
    vocab_size: int
    rope_theta: float
    max_positions: int
    rms_norm_eps: float = 1e-6
    rope_scaling: dict[str, Any] | None = None
    bidirectional: bool = False
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    block_size: int | None = None  # block diffusion: tokens per block
    subblock_size: int | None = None  # block diffusion: tokens per sub-block
    shifted_logits: bool = False  # masked diffusion: position p is predicted at p - 1 (Dream)
    serves: tuple[str, ...] = ()  # paradigms it also runs, beside the one it was trained for
    tied_embeddings: bool = False  # the LM head is the embedding table
    num_experts: int | None = None  # mixture of experts: experts per layer (None: a dense MLP)
    experts_per_token: int | None = None  # mixture of experts: experts each token is routed to
    checkpoint_names: str = "hf"  # "hf" or "llada": parameter naming in checkpoints
    tiny: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more config keys, passed to transformers as they are

    def __post_init__(self) -> None:
        if (self.num_experts is None) != (self.experts_per_token is None):
            raise ModelError(f"model {self.name}: num_experts and experts_per_token go together")
        if self.num_experts is not None and not 0 < (self.experts_per_token or 0) <= self.num_experts:
            raise ModelError(f"model {self.name}: experts_per_token={self.experts_per_token} must be in "
                             f"1..num_experts={self.num_experts}")

    @property
    def paradigms(self) -> tuple[str, ...]:
        """Every paradigm the model runs, the one it was trained for first."""
        return tuple(dict.fromkeys((self.paradigm, *self.serves)))

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def active_intermediate_size(self) -> int:
        """The MLP width one token runs through: its experts' together in a mixture of experts."""
        return self.intermediate_size * (self.experts_per_token or 1)

    def config(self) -> PretrainedConfig:
        """A transformers config with exactly these shapes."""
        from transformers import AutoConfig

        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {**self.rope_scaling, "rope_theta": self.rope_theta}
        common: dict[str, Any] = dict(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_positions,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            tie_word_embeddings=self.tied_embeddings,
            eos_token_id=self.eos_token_id,
            pad_token_id=None,
            bos_token_id=None,
        )
        if self.is_moe:
            common |= {"moe_intermediate_size": self.intermediate_size, "num_experts": self.num_experts,
                       "num_experts_per_tok": self.experts_per_token}
        try:
            config = AutoConfig.for_model(self.family, **common | self.extra)
        except ValueError as error:
            raise ModelError(f"model {self.name}: family {self.family!r} is no transformers model_type ({error})") \
                from None
        config.is_causal = not self.bidirectional
        return config

    @property
    def prompt_vocab_limit(self) -> int:
        """Ids below this are ordinary tokens (the mask token and what follows it are not)."""
        return min(self.vocab_size, self.mask_token_id if self.mask_token_id is not None else self.vocab_size)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token occupies in bf16 over all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2


def spec_from_config(config: dict[str, Any] | str | Path, name: str, paradigm: str, **decoder: Any) -> ModelSpec:
    """A spec from a transformers `config.json` (a path, or its dict) of any causal-LM family;
    `decoder`: the ModelSpec fields a config does not hold (mask_token_id, bidirectional,
    block_size, shifted_logits, serves, ...). Weights stay random unless --dlm-checkpoint gives some."""
    if not isinstance(config, dict):
        path = Path(config)
        file = path / "config.json" if path.is_dir() else path
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError) as error:
            raise ModelError(f"model {name}: cannot read a config.json at {str(file)!r}: {error}") from None
    assert isinstance(config, dict)
    missing = [key for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "vocab_size") if key not in config]
    if missing:
        raise ModelError(f"model {name}: its config lacks {', '.join(missing)}")
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
    experts = config.get("num_experts", config.get("num_local_experts"))
    heads = config["num_attention_heads"]
    eos = config.get("eos_token_id")
    fields: dict[str, Any] = dict(
        name=name, paradigm=paradigm, family=config["model_type"], hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"], num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        intermediate_size=config["moe_intermediate_size"] if experts else config["intermediate_size"],
        vocab_size=config["vocab_size"], rope_theta=float(theta),
        rope_scaling=rope if rope.get("rope_type", rope.get("type", "default")) != "default" else None,
        max_positions=config.get("max_position_embeddings", 4096), rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        eos_token_id=eos[0] if isinstance(eos, list) else eos, num_experts=experts,
        experts_per_token=config.get("num_experts_per_tok") if experts else None,
        tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        extra={key: value for key, value in config.items() if key not in _OWN_KEYS},
    )
    return ModelSpec(**fields | decoder)


_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="llama-3.1-8b", paradigm="ar", family="llama", hidden_size=4096, num_layers=32,
            num_heads=32, num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
            rope_theta=5e5, rope_scaling=_LLAMA3_ROPE, max_positions=131072, rms_norm_eps=1e-5,
            eos_token_id=128009,
        ),
        ModelSpec(
            name="llada-8b", paradigm="dlm", family="llama", hidden_size=4096, num_layers=32,
            num_heads=32, num_kv_heads=32, head_dim=128, intermediate_size=12288, vocab_size=126464,
            rope_theta=5e5, max_positions=4096, rms_norm_eps=1e-5, bidirectional=True,
            mask_token_id=126336, eos_token_id=126081, checkpoint_names="llada",
        ),
        ModelSpec(
            name="fast-dllm-v2-7b", paradigm="block", family="qwen2", hidden_size=3584,
            num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, intermediate_size=18944,
            vocab_size=152064, rope_theta=1e6, max_positions=32768, mask_token_id=151665,
            eos_token_id=151645, block_size=32, subblock_size=8,
        ),
        # Qwen2.5-7B: the AR twin of Dream-7B (Dream starts from its weights)
        ModelSpec(
            name="qwen2.5-7b", paradigm="ar", family="qwen2", hidden_size=3584, num_layers=28, num_heads=28,
            num_kv_heads=4, head_dim=128, intermediate_size=18944, vocab_size=152064, rope_theta=1e6,
            max_positions=32768, eos_token_id=151643,
        ),
        # Dream-7B: Qwen2.5-7B's shapes, bidirectional, logits shifted by one as in AR training
        ModelSpec(
            name="dream-7b", paradigm="dlm", family="qwen2", hidden_size=3584, num_layers=28, num_heads=28,
            num_kv_heads=4, head_dim=128, intermediate_size=18944, vocab_size=152064, rope_theta=1e6,
            max_positions=131072, bidirectional=True, mask_token_id=151666, eos_token_id=151643,
            shifted_logits=True,
        ),
        ModelSpec(
            name="qwen3-8b", paradigm="ar", family="qwen3", hidden_size=4096, num_layers=36, num_heads=32,
            num_kv_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936, rope_theta=1e6,
            max_positions=40960, eos_token_id=151645,
        ),
        # LLaDA-MoE-7B-A1B's shapes: 64 experts of width 1024, 8 a token, per-head q/k RMSNorm, as
        # transformers' qwen3_moe family implements them (bidirectional)
        ModelSpec(
            name="llada-moe-7b-a1b", paradigm="dlm", family="qwen3_moe", hidden_size=2048, num_layers=16,
            num_heads=16, num_kv_heads=16, head_dim=128, intermediate_size=1024, vocab_size=157184,
            rope_theta=5e4, max_positions=8192, rms_norm_eps=1e-5, bidirectional=True, mask_token_id=156895,
            eos_token_id=156892, num_experts=64, experts_per_token=8, extra={"norm_topk_prob": False},
        ),
        # Tiny siblings: same families and code paths, a few MB, for CPU runs and tests.
        ModelSpec(
            name="tiny-ar", paradigm="ar", family="llama", hidden_size=64, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128, vocab_size=512,
            rope_theta=5e5, rope_scaling=_LLAMA3_ROPE, max_positions=131072, rms_norm_eps=1e-5,
            tiny=True,
        ),
        ModelSpec(
            name="tiny-dlm", paradigm="dlm", family="llama", hidden_size=64, num_layers=2,
            num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=128, vocab_size=512,
            rope_theta=5e5, max_positions=2048, rms_norm_eps=1e-5, bidirectional=True,
            mask_token_id=500, checkpoint_names="llada", tiny=True,
        ),
        ModelSpec(
            name="tiny-block", paradigm="block", family="qwen2", hidden_size=64, num_layers=2,
            num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=160, vocab_size=512,
            rope_theta=1e6, max_positions=2048, mask_token_id=510, block_size=32,
            subblock_size=8, tiny=True,
        ),
        ModelSpec(
            name="tiny-qwen2", paradigm="ar", family="qwen2", hidden_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, intermediate_size=160, vocab_size=512, rope_theta=1e6,
            max_positions=2048, tiny=True,
        ),
        ModelSpec(
            name="tiny-qwen3", paradigm="ar", family="qwen3", hidden_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, intermediate_size=128, vocab_size=512, rope_theta=1e6,
            max_positions=2048, tiny=True,
        ),
        ModelSpec(
            name="tiny-dream", paradigm="dlm", family="qwen2", hidden_size=64, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=16, intermediate_size=160, vocab_size=512, rope_theta=1e6,
            max_positions=2048, bidirectional=True, mask_token_id=500, shifted_logits=True, tiny=True,
        ),
        ModelSpec(
            name="tiny-moe", paradigm="dlm", family="qwen3_moe", hidden_size=64, num_layers=2, num_heads=4,
            num_kv_heads=4, head_dim=16, intermediate_size=32, vocab_size=512, rope_theta=5e4,
            max_positions=2048, bidirectional=True, mask_token_id=500, num_experts=8, experts_per_token=2,
            tiny=True,
        ),
    )
}


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Make `spec` known by its name (read live by the grid, the options and the loader)."""
    if spec.name in MODEL_SPECS and MODEL_SPECS[spec.name] != spec and not replace:
        raise ModelError(f"model {spec.name!r} is registered already with other shapes; pass replace=True")
    MODEL_SPECS[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; an unknown name lists the known ones."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        known = ", ".join(MODEL_SPECS)
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> PreTrainedModel:
    """The architecture with seeded random weights, created directly on `device` in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(spec.config(), dtype=dtype, attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


# LLaDA checkpoints name their parameters after OLMo; each maps 1:1 onto the Llama layout.
_LLADA_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^model\.transformer\.wte\.weight$", "model.embed_tokens.weight"),
    (r"^model\.transformer\.ln_f\.weight$", "model.norm.weight"),
    (r"^model\.transformer\.ff_out\.weight$", "lm_head.weight"),
    (r"^model\.transformer\.blocks\.(\d+)\.q_proj\.", r"model.layers.\1.self_attn.q_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.k_proj\.", r"model.layers.\1.self_attn.k_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.v_proj\.", r"model.layers.\1.self_attn.v_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_out\.", r"model.layers.\1.self_attn.o_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_proj\.", r"model.layers.\1.mlp.gate_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.up_proj\.", r"model.layers.\1.mlp.up_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_out\.", r"model.layers.\1.mlp.down_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.", r"model.layers.\1.input_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.", r"model.layers.\1.post_attention_layernorm."),
)


def llada_to_llama_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a LLaDA state dict onto transformers' Llama parameter names."""
    renamed = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in _LLADA_RENAMES:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                renamed[new_key] = tensor
                break
        else:
            raise ModelError(f"LLaDA checkpoint parameter {key!r} has no Llama equivalent")
    return renamed


def load_checkpoint(spec: ModelSpec, path: str | Path, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """The spec's architecture with weights read from a local directory of safetensors files.

    The architecture always comes from the spec (no remote code runs); the checkpoint must fit
    it exactly. LLaDA-named parameters are renamed onto the Llama layout.
    """
    from safetensors.torch import load_file

    directory = Path(path)
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        raise ModelError(f"checkpoint for {spec.name}: no *.safetensors files in {str(directory)!r}")
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        state_dict.update(load_file(file, device=str(device)))
    if spec.checkpoint_names == "llada" and any(k.startswith("model.transformer.") for k in state_dict):
        state_dict = llada_to_llama_names(state_dict)
    model = build_model(spec, device, dtype)
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state_dict.items()}, strict=True)
    except RuntimeError as error:
        raise ModelError(f"checkpoint {str(directory)!r} does not fit {spec.name}: {error}") from None
    return model
