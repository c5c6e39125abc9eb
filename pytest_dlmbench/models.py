"""Model shapes by name, built with random weights or loaded from a local checkpoint.

Speed and memory depend on shapes, not on weight values, so the default is a model built
from the exact published configuration with seeded random weights; real weights are only
ever read from a local directory the user names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


class ModelError(ValueError):
    """A model name, checkpoint or shape request that cannot be honoured."""


@dataclass(frozen=True)
class ModelSpec:
    """The exact architecture of one named model, and what its decoder needs to know."""

    name: str
    paradigm: str  # the decoding paradigm the model was trained for
    family: str  # "llama" or "qwen2": the transformers class that implements it
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
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
    checkpoint_names: str = "hf"  # "hf" or "llada": parameter naming in checkpoints
    tiny: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> PretrainedConfig:
        """A transformers config with exactly these shapes (untied embeddings, SDPA)."""
        from transformers import LlamaConfig, Qwen2Config

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
            tie_word_embeddings=False,
            eos_token_id=self.eos_token_id,
            pad_token_id=None,
            bos_token_id=None,
        )
        config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[self.family]
        config = config_class(**common, **self.extra)
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
    )
}


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
