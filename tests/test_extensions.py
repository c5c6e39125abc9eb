"""Extensions and the shipped model shapes: analytic counts equal transformers' models, the graphs
runtime agrees with eager on every family it implements and refuses the others by name, specs
come from a config.json, registries are read live, causal spans run over a cache."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import new_log, on, prompt, reference_llada, tiny
from transformers import AutoModelForCausalLM

from pytest_dlmbench import api
from pytest_dlmbench.core import BenchPoint, Settings
from pytest_dlmbench.grid import SelectionError, points_for
from pytest_dlmbench.memory_model import parameter_count
from pytest_dlmbench.models import MODEL_SPECS, ModelError, build_model, get_spec, spec_from_config
from pytest_dlmbench.options import _names
from pytest_dlmbench.paradigms import DecodeOptions, make_paradigm
from pytest_dlmbench.paradigms.acceptance import Threshold
from pytest_dlmbench.paradigms.base import ADDED_STRATEGIES, ForwardShape, strategy_names
from pytest_dlmbench.roofline import forward_cost
from pytest_dlmbench.runtimes.fused import UnsupportedArchitecture

# The tiny sibling that runs each shipped shape's family and decoder path on the CPU
SIBLINGS = {"llama-3.1-8b": "tiny-ar", "llada-8b": "tiny-dlm", "fast-dllm-v2-7b": "tiny-block",
            "qwen2.5-7b": "tiny-qwen2", "dream-7b": "tiny-dream", "qwen3-8b": "tiny-qwen3",
            "llada-moe-7b-a1b": "tiny-moe"}


def test_every_shipped_shape_has_its_sibling_here():
    assert set(SIBLINGS) == {name for name, spec in MODEL_SPECS.items() if not spec.tiny}
    for real, small in SIBLINGS.items():
        a, b = get_spec(real), get_spec(small)
        assert (a.paradigm, a.family, a.shifted_logits, a.is_moe) == (b.paradigm, b.family, b.shifted_logits, b.is_moe)


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_the_analytic_parameter_count_is_transformers_count(name):
    spec = get_spec(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(spec.config())
    assert parameter_count(spec) == sum(p.numel() for p in model.parameters())


def test_published_sizes():
    billions = {name: round(parameter_count(get_spec(name)) / 1e9, 2) for name in SIBLINGS}
    assert billions == {"llama-3.1-8b": 8.03, "llada-8b": 8.02, "fast-dllm-v2-7b": 7.62, "qwen2.5-7b": 7.62,
                        "dream-7b": 7.62, "qwen3-8b": 8.19, "llada-moe-7b-a1b": 7.36}


def test_a_mixture_of_experts_reads_only_the_experts_its_tokens_chose():
    spec = get_spec("llada-moe-7b-a1b")
    dense = dataclasses.replace(spec, num_experts=None, experts_per_token=None,
                                intermediate_size=spec.active_intermediate_size)
    decode = ForwardShape("decode", 1, 100, 1)
    one, many = forward_cost(spec, decode, 1, "bf16"), forward_cost(spec, decode, 4096, "bf16")
    # one token: its 8 experts of 64 (the router's weights aside), as a dense MLP of their width
    assert one.flops == pytest.approx(forward_cost(dense, decode, 1, "bf16").flops, rel=0.01)
    assert one.bytes < parameter_count(spec) * 2 * 0.3
    assert many.bytes > parameter_count(spec) * 2 * 0.9  # thousands of tokens touch every expert


@pytest.mark.parametrize("name", [name for name in SIBLINGS.values() if name != "tiny-moe"])
def test_graphs_gives_eager_tokens_on_every_shipped_family(name):
    spec, model = tiny(name)
    decoder = make_paradigm(spec.paradigm, DecodeOptions(block_len=16))
    ids = prompt(spec, 2, 12)
    with torch.inference_mode():
        eager = decoder.generate(on(model, "eager"), spec, ids, 32, new_log()).tokens
        graphs = decoder.generate(on(model, "graphs"), spec, ids, 32, new_log()).tokens
    assert torch.equal(eager, graphs)


def test_qwen3_q_and_k_norms_are_not_skipped_by_graphs():
    spec, model = tiny("tiny-qwen3")
    with torch.no_grad():
        for layer in model.model.layers:  # norms far from 1, so skipping them would change everything
            layer.self_attn.q_norm.weight.uniform_(0.2, 3.0)
            layer.self_attn.k_norm.weight.uniform_(0.2, 3.0)
    ids = prompt(spec, 1, 9)
    with torch.inference_mode():
        expected = model(ids).logits
        got = on(model, "graphs").forward(ids, 0, 9, attention="causal")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_graphs_refuses_a_mixture_of_experts_by_name_and_eager_runs_it():
    spec, model = tiny("tiny-moe")
    with pytest.raises(UnsupportedArchitecture, match="mixture-of-experts MLPs.*--dlm-runtime=eager"):
        on(model, "graphs")
    decoder = make_paradigm("dlm", DecodeOptions(block_len=16))
    with torch.inference_mode():
        result = decoder.generate(on(model, "eager"), spec, prompt(spec, 2, 8), 32, new_log())
    assert not (result.tokens == spec.mask_token_id).any()
    settings = Settings(grid="smoke", models=("tiny-moe",), device="cpu", dtype="fp32")
    with pytest.raises(SelectionError, match="tiny-moe.*mixture-of-experts"):
        points_for(settings)
    assert points_for(dataclasses.replace(settings, runtimes=("eager",)))


def test_dream_decodes_as_its_sampler_with_shifted_logits():
    spec, model = tiny("tiny-dream")
    ids = prompt(spec, 2, 10)
    with torch.inference_mode():
        result = make_paradigm("dlm", DecodeOptions(block_len=16, steps=32)).generate(
            on(model), spec, ids, 32, new_log())
        expected = reference_llada(model, ids, 32, 16, 32, spec.mask_token_id, shifted=True)
        unshifted = reference_llada(model, ids, 32, 16, 32, spec.mask_token_id)
    assert torch.equal(result.tokens, expected) and not torch.equal(expected, unshifted)


def test_a_spec_from_config_json_builds_the_same_model(tmp_path):
    config = {"model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "vocab_size": 300,
              "rope_theta": 1e6, "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
              "eos_token_id": [7, 8], "attention_dropout": 0.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = spec_from_config(tmp_path, "my-qwen3", "ar", serves=("dlm",), mask_token_id=299)
    assert (spec.family, spec.num_kv_heads, spec.eos_token_id, spec.paradigms) == ("qwen3", 2, 7, ("ar", "dlm"))
    model = build_model(spec, torch.device("cpu"), torch.float32)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert parameter_count(spec) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ModelError, match="lacks hidden_size"):
        spec_from_config({"model_type": "llama"}, "broken", "ar")
    with pytest.raises(ModelError, match="no transformers model_type"):
        dataclasses.replace(spec, family="no-such-family").config()


@pytest.fixture
def registered():
    """What a test registers is gone after it."""
    models, strategies = dict(MODEL_SPECS), dict(ADDED_STRATEGIES)
    yield
    MODEL_SPECS.clear()
    MODEL_SPECS.update(models)
    ADDED_STRATEGIES.clear()
    ADDED_STRATEGIES.update(strategies)


def test_registries_are_read_live(registered):
    parse_strategies = _names("strategy", strategy_names)  # made before the registration, as at import
    api.register_strategy("dlm", "loose", lambda options, fidelity: dataclasses.replace(
        make_paradigm("dlm", options, "parallel", fidelity), parallel=Threshold(0.5)))
    api.register_model(dataclasses.replace(get_spec("tiny-qwen3"), name="tiny-two", serves=("dlm",),
                                           mask_token_id=500))
    assert parse_strategies("baseline,loose") == ("baseline", "loose")
    assert "loose" in parse_strategies("all")
    points = points_for(Settings(grid="smoke", models=("tiny-two",), strategies=("baseline", "loose"), device="cpu",
                                 dtype="fp32"))
    assert {(p.paradigm, p.strategy) for p in points} == {("ar", "baseline"), ("dlm", "baseline"), ("dlm", "loose")}
    decoder = make_paradigm("dlm", DecodeOptions(), "loose")
    assert decoder.describe(get_spec("tiny-two"), 32)["threshold"] == 0.5
    with pytest.raises(api.DecodeError, match="one of paradigm dlm's own"):
        api.register_strategy("dlm", "parallel", lambda options, fidelity: decoder)
    with pytest.raises(ModelError, match="registered already"):
        api.register_model(dataclasses.replace(get_spec("tiny-ar"), hidden_size=32))


def test_a_paradigm_refuses_a_runtime_it_does_not_declare(registered):
    class EagerOnly:
        name = "eager-only"
        runtimes = ("eager",)

    api.register_paradigm(EagerOnly)
    try:
        from pytest_dlmbench.grid import check_runtime

        with pytest.raises(ValueError, match="runs on the runtimes eager, not graphs"):
            check_runtime(BenchPoint("eager-only", "tiny-ar", 4, 4, 1))
        check_runtime(BenchPoint("eager-only", "tiny-ar", 4, 4, 1, runtime="eager"))
    finally:
        del api.PARADIGMS["eager-only"]


@pytest.mark.parametrize("runtime", ["eager", "graphs"])
def test_a_causal_span_over_a_cache_sees_what_a_whole_causal_forward_sees(runtime):
    spec, model = tiny("tiny-ar")
    ids = prompt(spec, 2, 14)
    executor = on(model, runtime)
    with torch.inference_mode():
        whole = executor.forward(ids, 0, 14, attention="causal").clone()  # (2, 14, vocab)
        cache = executor.new_cache(2, 14)
        executor.forward(ids[:, :9], 0, 1, cache, keep=True, attention="causal")
        span = executor.forward(ids[:, 9:], 9, 5, cache, attention="causal")  # a 5-token draft, verified
    torch.testing.assert_close(span, whole[:, 9:], rtol=1e-4, atol=1e-4)
