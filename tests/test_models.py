"""Model shapes match the published sizes; checkpoints load, including LLaDA's naming."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from helpers import CPU, prompt, tiny
from pytest_dlmbench.models import MODEL_SPECS, ModelError, get_spec, load_checkpoint


@pytest.mark.parametrize(("name", "billions"), [("llama-3.1-8b", 8.030), ("llada-8b", 8.016), ("fast-dllm-v2-7b", 7.616)])
def test_parameter_counts_check_the_shapes(name, billions):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(get_spec(name).config())
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=5e-4)


@pytest.mark.parametrize(("name", "kib"), [("llama-3.1-8b", 128), ("fast-dllm-v2-7b", 56), ("llada-8b", 512)])
def test_kv_cache_bytes_per_token(name, kib):
    assert get_spec(name).kv_bytes_per_token == kib * 1024


def test_every_model_has_a_tiny_sibling_of_its_family():
    def kind(spec):
        return spec.paradigm, spec.family, spec.bidirectional, spec.shifted_logits, spec.is_moe

    real = {kind(s) for s in MODEL_SPECS.values() if not s.tiny}
    tiny_ = {kind(s) for s in MODEL_SPECS.values() if s.tiny}
    assert real == tiny_


def test_unknown_model_lists_the_known_names():
    with pytest.raises(ModelError, match="unknown model 'gpt-9'.*llama-3.1-8b.*tiny-block"):
        get_spec("gpt-9")


def _to_llada_names(state_dict):
    renames = {
        "model.embed_tokens.weight": "model.transformer.wte.weight",
        "model.norm.weight": "model.transformer.ln_f.weight",
        "lm_head.weight": "model.transformer.ff_out.weight",
    }
    parts = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
             "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
             "mlp.down_proj": "ff_out", "input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm"}
    out = {}
    for key, value in state_dict.items():
        if key in renames:
            out[renames[key]] = value
            continue
        _, _, layer, rest = key.split(".", 3)
        module, _, param = rest.rpartition(".")
        out[f"model.transformer.blocks.{layer}.{parts[module]}.{param}"] = value
    return out


def test_llada_checkpoint_names_load_onto_the_llama_layout(tmp_path):
    spec, original = tiny("tiny-dlm", seed=7)
    save_file({k: v.contiguous() for k, v in _to_llada_names(original.state_dict()).items()},
              tmp_path / "model.safetensors")
    loaded = load_checkpoint(spec, tmp_path, CPU, torch.float32)
    ids = prompt(spec, 2, 12)
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, original(ids).logits)


def test_hf_named_checkpoint_loads(tmp_path):
    spec, original = tiny("tiny-block", seed=3)
    save_file({k: v.contiguous() for k, v in original.state_dict().items()}, tmp_path / "model.safetensors")
    loaded = load_checkpoint(spec, tmp_path, CPU, torch.float32)
    ids = prompt(spec, 1, 9)
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, original(ids).logits)


def test_checkpoint_errors_name_the_problem(tmp_path):
    spec, other = tiny("tiny-ar")
    with pytest.raises(ModelError, match="no \\*.safetensors files"):
        load_checkpoint(spec, tmp_path, CPU, torch.float32)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, tmp_path / "model.safetensors")
    with pytest.raises(ModelError, match="does not fit tiny-dlm"):
        load_checkpoint(get_spec("tiny-dlm"), tmp_path, CPU, torch.float32)
