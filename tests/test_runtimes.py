"""The execution runtimes: the graphs runtime's static-shape code (run uncaptured on the CPU)
gives eager's tokens for every paradigm and strategy; both speak transformers' old and new
cache argument; bad requests are refused."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

from helpers import new_log, on, prompt, tiny
from pytest_dlmbench.core import DEFAULT_RUNTIME, RUNTIME_NAMES, BenchPoint
from pytest_dlmbench.paradigms import PARADIGMS, DecodeOptions, make_paradigm
from pytest_dlmbench.runtimes import RUNTIMES, make_runtime
from pytest_dlmbench.runtimes.base import cache_keyword

MODELS = {"ar": "tiny-ar", "dlm": "tiny-dlm", "block": "tiny-block"}
CASES = [(paradigm, strategy) for paradigm, cls in PARADIGMS.items() for strategy in cls.strategies]


@pytest.fixture(scope="module")
def models():
    return {paradigm: tiny(name) for paradigm, name in MODELS.items()}


def tokens(spec, model, paradigm, strategy, options, runtime, prompt_len, gen_len=64):
    with torch.inference_mode():
        return make_paradigm(paradigm, options, strategy).generate(
            on(model, runtime), spec, prompt(spec, 2, prompt_len), gen_len, new_log())


@pytest.mark.parametrize("options", [DecodeOptions(block_len=16, tpf=2.5), DecodeOptions(block_len=16, threshold=0.02)],
                         ids=["simulated", "model"])
@pytest.mark.parametrize("prompt_len", [10, 40])  # block diffusion: no aligned prefix, and a partial block
@pytest.mark.parametrize(("paradigm", "strategy"), CASES)
def test_graphs_gives_eager_tokens_for_every_paradigm_and_strategy(models, paradigm, strategy, options, prompt_len):
    spec, model = models[paradigm]
    eager = tokens(spec, model, paradigm, strategy, options, "eager", prompt_len)
    graphs = tokens(spec, model, paradigm, strategy, options, "graphs", prompt_len)
    assert torch.equal(eager.tokens, graphs.tokens)
    assert eager.nfe == graphs.nfe and eager.shapes == graphs.shapes


def test_the_registry_is_the_option_list():
    assert set(RUNTIMES) == set(RUNTIME_NAMES) and DEFAULT_RUNTIME in RUNTIMES
    with pytest.raises(ValueError, match="unknown runtime 'jit'; known runtimes: graphs, eager"):
        make_runtime("jit", None)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_installed_transformers_gets_its_own_cache_argument_without_a_deprecation(models, runtime):
    spec, model = models["ar"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated `past_key_values` would raise here
        tokens(spec, model, "ar", "baseline", DecodeOptions(), runtime, 10, gen_len=4)


class OldSignature(torch.nn.Module):
    """A model whose forward names its cache `past_key_values` only, as transformers before `cache`."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, input_ids, past_key_values=None, **kwargs):
        self.calls += past_key_values is not None
        if "cache" in kwargs:
            raise TypeError("forward() got an unexpected keyword argument 'cache'")
        keyword = cache_keyword(self.model)
        return self.model(input_ids, **{keyword: past_key_values} if past_key_values is not None else {}, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("paradigm", ["ar", "block"])
def test_a_forward_that_names_past_key_values_gets_it(models, runtime, paradigm):
    spec, model = models[paradigm]
    old = OldSignature(model)
    assert cache_keyword(old) == "past_key_values" and cache_keyword(model) in ("cache", "past_key_values")
    options = DecodeOptions(tpf=2.0)
    strategy = PARADIGMS[paradigm].strategies[-1]
    expected = tokens(spec, model, paradigm, strategy, options, runtime, 40)
    got = tokens(spec, old, paradigm, strategy, options, runtime, 40)
    assert torch.equal(expected.tokens, got.tokens) and old.calls == got.nfe


def test_graphs_refuses_a_forward_that_would_see_a_gap(models):
    spec, model = models["dlm"]
    runtime = make_runtime("graphs", model)
    cache = runtime.new_cache(1, 32)
    with torch.inference_mode():
        runtime.forward(prompt(spec, 1, 32), 0, 1, cache, keep=True)
        cache.drop(8, 16)
        with pytest.raises(ValueError, match=r"a forward over \[20, 24\) would see positions \[\(0, 8\), \(16, 32\)\]"):
            runtime.forward(prompt(spec, 1, 4), 20, 1, cache)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_block_causal_mask_needs_an_empty_cache(models, runtime):
    spec, model = models["block"]
    executor = make_runtime(runtime, model)
    cache = executor.new_cache(1, 64)
    with torch.inference_mode():
        executor.forward(prompt(spec, 1, 32), 0, 1, cache, keep=True)
        with pytest.raises(ValueError, match="attention='block_causal' needs an empty cache, which holds 32 "
                                             "positions"):
            executor.forward(prompt(spec, 1, 8), 32, 1, cache, attention="block_causal", block_size=8)
        with pytest.raises(ValueError, match="attention='sliding'; allowed: full, causal, block_causal"):
            executor.forward(prompt(spec, 1, 8), 32, 1, cache, attention="sliding")


def test_point_ids_name_the_runtime_only_when_not_the_default():
    point = BenchPoint("dlm", "llada-8b", 40, 256, 1, "dual_cache")
    assert point.id == "dlm-llada-8b-p40-g256-b1-dual_cache"
    eager = BenchPoint("dlm", "llada-8b", 40, 256, 1, "dual_cache", "eager")
    assert eager.id == "dlm-llada-8b-p40-g256-b1-dual_cache-eager"
    assert eager.runtime_key == point.runtime_key and eager.shape_key != point.shape_key


def test_joined_weights_are_what_the_modules_hold():
    from pytest_dlmbench.runtimes.fused import layer_weights

    spec, model = tiny("tiny-block", seed=3)
    before = {name: parameter.clone() for name, parameter in model.named_parameters()}
    first = layer_weights(model)
    assert layer_weights(model) is first  # joined once
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attention.k_proj.weight.untyped_storage().data_ptr() == first[0].qkv.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == first[0].gate_up.untyped_storage().data_ptr()
    assert first[0].qkv_bias is not None and first[0].sizes == (64, 32, 32)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)


def test_the_graphs_runtime_names_a_bias_it_cannot_run():
    spec, model = tiny("tiny-ar", seed=4)
    layer = model.model.layers[1]
    layer.mlp.down_proj.bias = torch.nn.Parameter(torch.zeros(layer.mlp.down_proj.out_features))
    with pytest.raises(ValueError, match="does not implement .*layer 1's bias on down_proj \\(implemented: biases "
                                         "on q_proj, k_proj and v_proj only\\)"):
        make_runtime("graphs", model)


class RecordedForward:
    """Stands in for a CUDA graph on the CPU: a replay reruns the forward it was captured from."""

    def __init__(self, run) -> None:
        self.run, self.replays = run, 0

    def replay(self) -> None:
        self.replays += 1
        self.run()


def captured_on_cpu(model, monkeypatch):
    """The graphs runtime as on CUDA (every shape captured once, then replayed), with graphs that
    rerun their forward uncompiled."""
    from pytest_dlmbench.runtimes import graphs

    monkeypatch.setattr(graphs, "COMPILE", False)
    runtime = make_runtime("graphs", model)
    runtime.capture = True

    def capture(captured, cache, attention):
        captured.logits = torch.empty_like(runtime._run(captured, cache, attention))
        captured.graph = RecordedForward(lambda: captured.logits.copy_(runtime._run(captured, cache, attention)))

    runtime._capture = capture
    return runtime


@pytest.mark.parametrize(("paradigm", "strategy"), CASES)
def test_a_capture_run_that_skips_seen_shapes_leaves_nothing_to_capture(models, monkeypatch, paradigm, strategy):
    """As the runner does at warm-up 0: where a paradigm's shapes are fixed, the capture run runs
    each graph once, when captured; the generation after it captures nothing new and gives the
    tokens of a runtime that never skipped."""
    spec, model = models[paradigm]
    decoder = make_paradigm(paradigm, DecodeOptions(block_len=16, tpf=2.5), strategy)
    ids = prompt(spec, 2, 40)
    skipping, plain = captured_on_cpu(model, monkeypatch), captured_on_cpu(model, monkeypatch)
    fixed = decoder.fixed_shapes(spec, 64)
    with torch.inference_mode():
        with skipping.skipping_seen_shapes() if fixed else contextlib.nullcontext():
            decoder.generate(skipping, spec, ids, 64, new_log())
        shapes = set(skipping.graphs)
        replays = sum(captured.graph.replays for captured in skipping.graphs.values())
        timed = decoder.generate(skipping, spec, ids, 64, new_log())
        expected = decoder.generate(plain, spec, ids, 64, new_log())
    assert set(skipping.graphs) == shapes
    assert (replays == len(shapes)) is fixed  # else the capture run replayed every forward
    assert torch.equal(timed.tokens, expected.tokens) and timed.nfe == expected.nfe


def test_forwards_above_the_capture_limit_run_uncaptured_and_give_the_same_logits(models, monkeypatch):
    """Large forwards are compute-bound: captured, their activations and logits would stay in the
    graph pool for the rest of the point, where eager frees them."""
    from pytest_dlmbench.runtimes import graphs

    monkeypatch.setattr(graphs, "CAPTURE_MAX_TOKENS", 64)
    spec, model = models["dlm"]
    runtime, eager = captured_on_cpu(model, monkeypatch), make_runtime("eager", model)
    ids = prompt(spec, 2, 40)
    with torch.inference_mode():
        large = runtime.forward(ids, 0, 2).clone()  # 2 x 40 tokens: over the limit
        assert not runtime.graphs
        small = runtime.forward(ids[:1], 0, 2)  # 40 tokens: captured
        assert len(runtime.graphs) == 1
        expected = eager.forward(ids, 0, 2)
    torch.testing.assert_close(large, expected)
    torch.testing.assert_close(small, expected[:1])


def test_eager_dual_cache_steps_write_the_block_in_place(models):
    """As Fast-dLLM's dual cache does: every step of a block attends to the refresh's cache, its
    block's slots overwritten, so no step copies the cache; the roofline counts no copy either."""
    from pytest_dlmbench.roofline import forward_cost

    spec, model = models["dlm"]
    runtime = make_runtime("eager", model)
    storage = []  # per forward: the first layer's keys (address, positions)
    forward = runtime.forward

    def recording(ids, start, rows, cache=None, keep=False, **kwargs):
        logits = forward(ids, start, rows, cache, keep, **kwargs)
        keys = cache.cache.layers[0].keys
        storage.append((keys.data_ptr(), keys.shape[-2]))
        return logits

    runtime.forward = recording
    with torch.inference_mode():
        result = make_paradigm("dlm", DecodeOptions(block_len=16), "dual_cache").generate(
            runtime, spec, prompt(spec, 2, 40), 32, new_log())
    blocks = [storage[index:index + 16] for index in range(0, len(storage), 16)]  # a refresh, then 15 steps
    assert len(blocks) == 2 and all(set(block) == {(block[0][0], 40 + 32)} for block in blocks)
    steps = [shape for shape in result.shapes if shape.kind == "step"]
    assert len(steps) == 30 and all(shape.in_place for shape in steps)
    assert forward_cost(spec, steps[0], 2, "fp32", concatenating_cache=True) == forward_cost(spec, steps[0], 2, "fp32")
