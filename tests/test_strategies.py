"""Acceleration strategies: exact when their caches are refreshed every step, and forward counts
that match their algorithms."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from helpers import Recorder, new_log, on, prompt
from pytest_dlmbench.memory_model import predicted_peak_bytes
from pytest_dlmbench.paradigms import DecodeError, DecodeOptions, ForwardLog, make_paradigm
from pytest_dlmbench.paradigms.base import parallel_acceptance
from pytest_dlmbench.paradigms.acceptance import Replay, RowTPF, Schedule, TargetTPF, Threshold, choose




def generate(model_and_spec, paradigm, strategy, options, prompt_len=10, gen_len=64, batch=2):
    spec, model = model_and_spec
    decoder = make_paradigm(paradigm, options, strategy)
    with torch.inference_mode():
        return decoder.generate(on(model), spec, prompt(spec, batch, prompt_len), gen_len, new_log())


REFRESH = dict(refresh_every_step=True)


@pytest.mark.parametrize(
    ("strategy", "reference", "options"),
    [
        ("prefix_cache", "baseline", DecodeOptions(block_len=16, steps=32, **REFRESH)),
        ("dual_cache", "baseline", DecodeOptions(block_len=16, steps=32, **REFRESH)),
        ("dual_cache", "baseline", DecodeOptions(block_len=32, steps=64, **REFRESH)),
        ("dual_cache+parallel", "parallel", DecodeOptions(block_len=16, tpf=3.0, **REFRESH)),
        ("dual_cache+parallel", "parallel", DecodeOptions(block_len=16, threshold=0.004, **REFRESH)),
    ],
)
def test_dlm_cache_refreshed_every_step_gives_the_uncached_tokens(tiny_dlm, strategy, reference, options):
    cached = generate(tiny_dlm, "dlm", strategy, options)
    plain = generate(tiny_dlm, "dlm", reference, dataclasses.replace(options, refresh_every_step=False))
    assert torch.equal(cached.tokens, plain.tokens)


@pytest.mark.parametrize("options", [DecodeOptions(tpf=2.5, **REFRESH), DecodeOptions(threshold=0.004, **REFRESH)])
@pytest.mark.parametrize("prompt_len", [40, 32, 5])
def test_block_subblock_cache_refreshed_every_step_gives_the_uncached_tokens(tiny_block, options, prompt_len):
    cached = generate(tiny_block, "block", "parallel+subblock_cache", options, prompt_len=prompt_len)
    plain = generate(tiny_block, "block", "parallel", dataclasses.replace(options, refresh_every_step=False),
                     prompt_len=prompt_len)
    assert torch.equal(cached.tokens, plain.tokens)


def test_dlm_parallel_with_threshold_one_is_one_token_per_step(tiny_dlm):
    parallel = generate(tiny_dlm, "dlm", "parallel", DecodeOptions(block_len=16, threshold=1.0))
    baseline = generate(tiny_dlm, "dlm", "baseline", DecodeOptions(block_len=16))
    assert torch.equal(parallel.tokens, baseline.tokens) and parallel.nfe == baseline.nfe == 64


@pytest.mark.parametrize(("strategy", "refresh"), [("parallel", False), ("parallel+subblock_cache", True)])
def test_block_parallel_with_threshold_one_is_the_baseline(tiny_block, strategy, refresh):
    options = DecodeOptions(threshold=1.5, refresh_every_step=refresh)
    parallel = generate(tiny_block, "block", strategy, options, prompt_len=40)
    baseline = generate(tiny_block, "block", "baseline", DecodeOptions(), prompt_len=40)
    assert torch.equal(parallel.tokens, baseline.tokens)
    assert parallel.nfe == baseline.nfe or refresh


@pytest.mark.parametrize("strategy", ["prefix_cache", "dual_cache"])
def test_dlm_cache_forward_counts(tiny_dlm, strategy):
    result = generate(tiny_dlm, "dlm", strategy, DecodeOptions(block_len=16, steps=32))
    blocks = 64 // 16
    assert len(result.forward_ms["refresh"]) == blocks  # one full forward per block...
    assert len(result.forward_ms["step"]) == 32 - blocks  # ...plus the remaining steps on the block
    assert result.nfe == 32


def test_dlm_simulated_tpf_commits_the_target_per_forward(tiny_dlm):
    spec, model = tiny_dlm
    recorder = Recorder(model)
    decoder = make_paradigm("dlm", DecodeOptions(block_len=16, tpf=3.0, tpf_dispersion=0), "parallel")
    with torch.inference_mode():
        result = decoder.generate(on(recorder), spec, prompt(spec, 2, 10), 32, new_log())
    states = [x[:, 10:] for x in recorder.inputs] + [result.tokens]
    commits = [int((a != b).sum(dim=1)[0]) for a, b in zip(states, states[1:])]
    assert commits == [3, 3, 3, 3, 3, 1] * 2  # 16 tokens per block: five forwards of 3, then the last one
    assert result.nfe == 12 and decoder.describe(spec, 32)["acceptance"] == "simulated"


def test_block_simulated_tpf_forward_count(tiny_block):
    result = generate(tiny_block, "block", "parallel", DecodeOptions(tpf=3.0, tpf_dispersion=0), prompt_len=32,
                      gen_len=64, batch=1)
    # blocks [32, 64) and [64, 96): the first token of each comes from the previous forward (prefill,
    # commit), so the sub-blocks hold 7, 8, 8, 8 masks: 3 forwards each at 3 tokens per forward.
    assert len(result.forward_ms["step"]) == 2 * 4 * 3
    assert result.nfe == 1 + 24 + 1


def test_choose_rules():
    confidence = torch.tensor([[0.95, 0.2, -torch.inf, 0.91], [0.1, 0.3, 0.2, -torch.inf]])
    assert choose(confidence, None, Threshold(0.9)).tolist() == [[True, False, False, True], [False, True, False, False]]
    assert choose(confidence, 2, Schedule(1)).tolist() == [[True, False, False, True], [False, True, True, False]]
    assert choose(confidence, 5, Schedule(1)).sum(dim=1).tolist() == [3, 3]  # never more than is masked
    assert choose(confidence, (1, 2), Schedule(1)).tolist() == [[True, False, False, False], [False, True, True, False]]
    assert choose(confidence, (9, 0), Schedule(1)).sum(dim=1).tolist() == [3, 0]


@pytest.mark.parametrize(("tpf", "dispersion"), [(3.0, 1.0), (2.5, 3.0), (1.0, 1.0)])
def test_row_draws_have_the_asked_mean_and_dispersion(tpf, dispersion):
    draws = [count for span in range(200) for step, row_counts in zip(range(25), RowTPF(tpf, dispersion).counts(
        32, span, 4)) for count in row_counts]
    mean = sum(draws) / len(draws)
    variance = sum((count - mean) ** 2 for count in draws) / len(draws)
    assert mean == pytest.approx(tpf, rel=0.03)
    assert variance == pytest.approx(dispersion * (tpf - 1), rel=0.1, abs=1e-9)
    again = [next(RowTPF(tpf, dispersion).counts(32, 7, 4)) for _ in range(2)]
    assert again[0] == again[1]  # seeded per span: every generation of a point commits alike


@pytest.mark.parametrize(("paradigm", "strategy", "gen_len"), [("dlm", "parallel", 64), ("dlm", "dual_cache+parallel", 64),
                                                               ("block", "parallel", 64)])
def test_per_row_acceptance_makes_a_batch_wait_for_its_slowest_row(tiny_dlm, tiny_block, paradigm, strategy, gen_len):
    model = tiny_dlm if paradigm == "dlm" else tiny_block
    options = DecodeOptions(block_len=16, tpf=3.0)
    nfe = {batch: generate(model, paradigm, strategy, options, gen_len=gen_len, batch=batch).nfe for batch in (1, 16)}
    assert nfe[16] > nfe[1]
    equal_rows = dataclasses.replace(options, tpf_dispersion=0)
    assert (generate(model, paradigm, strategy, equal_rows, gen_len=gen_len, batch=16).nfe
            == generate(model, paradigm, strategy, equal_rows, gen_len=gen_len, batch=1).nfe)
    result = generate(model, paradigm, strategy, options, gen_len=gen_len, batch=16)
    assert max(result.row_nfe) <= result.nfe and min(result.row_nfe) < result.nfe  # rows that finished early
    assert all(sum(sum(step) for step in span) == 16 * 16 for span in result.commits if paradigm == "dlm")


@pytest.mark.parametrize(("paradigm", "strategy"), [("dlm", "parallel"), ("dlm", "dual_cache+parallel"),
                                                    ("block", "parallel"), ("block", "parallel+subblock_cache")])
def test_a_replayed_trace_commits_as_recorded(tiny_dlm, tiny_block, paradigm, strategy):
    model = tiny_dlm if paradigm == "dlm" else tiny_block
    recorded = generate(model, paradigm, strategy, DecodeOptions(block_len=16, threshold=0.004), batch=3)
    replay = dataclasses.replace(DecodeOptions(block_len=16, threshold=0.004), replay=recorded.commits)
    assert parallel_acceptance(replay) == Replay(recorded.commits)
    replayed = generate(model, paradigm, strategy, replay, batch=3)
    assert replayed.commits == recorded.commits and replayed.nfe == recorded.nfe
    assert replayed.row_nfe == recorded.row_nfe


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(DecodeError, match="paradigm ar has no strategy 'dual_cache'; it has: baseline"):
        make_paradigm("ar", DecodeOptions(), "dual_cache")


def test_acceptance_labels():
    assert parallel_acceptance(DecodeOptions(tpf=3.0)) == RowTPF(3.0, 1.0, 0)
    assert parallel_acceptance(DecodeOptions(tpf=3.0, tpf_dispersion=0, seed=5)) == TargetTPF(3.0)
    assert parallel_acceptance(DecodeOptions(threshold=0.8)) == Threshold(0.8)


@pytest.mark.parametrize(("strategy", "caches"), [("baseline", False), ("parallel", False), ("dual_cache", True)])
def test_dlm_builds_a_kv_cache_only_in_the_caching_strategies(tiny_dlm, strategy, caches):
    spec, model = tiny_dlm
    built = []

    class Spy:
        def __call__(self, *args, **kwargs):
            out = model(*args, **kwargs)
            built.append(out.past_key_values is not None)
            return out

        def __getattr__(self, name):
            return getattr(model, name)

    with torch.inference_mode():
        make_paradigm("dlm", DecodeOptions(block_len=16, tpf=4.0), strategy).generate(
            on(Spy()), spec, prompt(spec, 1, 10), 32, new_log())
    assert any(built) == caches  # an unused cache would cost batch x length x KV bytes of memory


@pytest.mark.parametrize(("paradigm", "strategy"), [(name, strategy) for name in ("ar", "dlm", "block")
                                                    for strategy in make_paradigm(name, DecodeOptions()).strategies])
@pytest.mark.parametrize("options", [DecodeOptions(block_len=16, tpf=3.0), DecodeOptions(block_len=16, threshold=0.004)])
def test_both_fidelities_decode_the_same_tokens_with_more_memory_for_reference(tiny_ar, tiny_dlm, tiny_block, paradigm,
                                                                               strategy, options):
    spec, model = {"ar": tiny_ar, "dlm": tiny_dlm, "block": tiny_block}[paradigm]
    ids = prompt(spec, 3, 32)  # 32 + 64: whole blocks, so v2's padding of the last block adds nothing
    results, peaks = {}, {}
    for fidelity in ("lean", "reference"):
        decoder = make_paradigm(paradigm, options, strategy, fidelity)
        with torch.inference_mode():
            results[fidelity] = decoder.generate(on(model), spec, ids, 64, new_log())
        peaks[fidelity] = predicted_peak_bytes(spec, decoder.memory_phases(spec, 32, 64), 3, "fp32")
    assert torch.equal(results["lean"].tokens, results["reference"].tokens)
    assert results["lean"].nfe == results["reference"].nfe
    assert (peaks["reference"] > peaks["lean"]) == (paradigm != "ar")  # logits everywhere, float64 scoring


class DeviceReads:
    """Where the host reads a tensor's values (on CUDA each read waits for the queued work), while on."""

    METHODS = ("__bool__", "__int__", "__float__", "item", "tolist")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on, self.seen = False, []
        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, self.counted(name, getattr(torch.Tensor, name)))

    def counted(self, name, method):
        def read(tensor, *args):
            if self.on:
                self.seen.append(name)
            return method(tensor, *args)

        return read


COUNTED = (DecodeOptions(block_len=16, tpf=3.0), DecodeOptions(block_len=16, tpf=2.5, tpf_dispersion=0))
FIXED_RULES = [("dlm", strategy, options) for strategy in make_paradigm("dlm", DecodeOptions()).strategies
               for options in COUNTED] + [
    ("block", "baseline", DecodeOptions()), ("block", "parallel", DecodeOptions(tpf=3.0)),
    ("dlm", "parallel", DecodeOptions(block_len=16, threshold=1.0))]


@pytest.mark.parametrize("runtime", ["eager", "graphs"])
@pytest.mark.parametrize(("paradigm", "strategy", "options"), [
    *FIXED_RULES, ("dlm", "parallel", DecodeOptions(block_len=16, threshold=0.004)),
    ("block", "parallel", DecodeOptions(threshold=0.004)), ("block", "parallel+subblock_cache", DecodeOptions(tpf=3.0))])
def test_only_the_models_confidences_make_a_step_read_the_device(tiny_dlm, tiny_block, monkeypatch, runtime,
                                                                 paradigm, strategy, options):
    """Where the rule fixes a span's forwards, the decoding loop never waits for the device; where
    the confidences decide (or the sub-block cache's refresh does), each step reads once."""
    spec, model = tiny_dlm if paradigm == "dlm" else tiny_block
    reads = DeviceReads(monkeypatch)
    executor = on(model, runtime)
    real_forward, real_result = executor.forward, ForwardLog.result

    def forward(*args, **kwargs):  # the runtime's own work is not the loop's
        reads.on = False
        try:
            return real_forward(*args, **kwargs)
        finally:
            reads.on = True

    def result(log, tokens, **kwargs):
        reads.on = False
        return real_result(log, tokens, **kwargs)

    monkeypatch.setattr(executor, "forward", forward)
    monkeypatch.setattr(ForwardLog, "result", result)
    decoder = make_paradigm(paradigm, options, strategy)
    with torch.inference_mode():
        reads.on = True
        generated = decoder.generate(executor, spec, prompt(spec, 2, 40), 64, new_log())
    assert not (generated.tokens == spec.mask_token_id).any()
    fixed = (paradigm, strategy, options) in FIXED_RULES
    assert (reads.seen == []) == fixed, reads.seen
    assert fixed or len(reads.seen) >= generated.nfe // 2


class SteeringLogits:
    """A runtime whose forwards return random logits, flat or sharply peaked: whatever the logits
    steer in a generation changes between the two. Records each forward's call and cache state."""

    def __init__(self, runtime, peak: float) -> None:
        self.runtime, self.peak, self.calls = runtime, peak, []
        self.generator = torch.Generator().manual_seed(int(peak))

    def forward(self, ids, start, rows, cache=None, keep=False, **kwargs):
        self.calls.append((tuple(ids.shape), start, rows if isinstance(rows, int) else tuple(rows.tolist()), keep,
                           tuple(cache.held) if cache is not None else None, tuple(kwargs.items())))
        logits = self.runtime.forward(ids, start, rows, cache, keep, **kwargs)
        return torch.randn(logits.shape, generator=self.generator) * self.peak

    def __getattr__(self, name):
        return getattr(self.runtime, name)


@pytest.mark.parametrize(("paradigm", "strategy"), [(name, strategy) for name in ("ar", "dlm", "block")
                                                    for strategy in make_paradigm(name, DecodeOptions()).strategies])
@pytest.mark.parametrize("rule", ["simulated", "confidences"])
def test_fixed_shapes_are_those_the_logits_do_not_steer(tiny_ar, tiny_dlm, tiny_block, paradigm, strategy, rule):
    """What lets a capture run skip the forwards it has seen: a paradigm that says its shapes are
    fixed makes the same forwards, on the same cache, whatever its logits; one that does not, does not."""
    spec, model = {"ar": tiny_ar, "dlm": tiny_dlm, "block": tiny_block}[paradigm]
    options = DecodeOptions(block_len=16, tpf=3.0) if rule == "simulated" else DecodeOptions(block_len=16, threshold=0.5)
    decoder = make_paradigm(paradigm, options, strategy)
    calls = []
    for peak in (0.0, 60.0):
        runtime = SteeringLogits(on(model, "graphs"), peak)
        with torch.inference_mode():
            decoder.generate(runtime, spec, prompt(spec, 2, 40), 64, new_log())
        calls.append(runtime.calls)
    steered = strategy == "parallel+subblock_cache" or (rule == "confidences" and strategy.endswith("parallel"))
    assert decoder.fixed_shapes(spec, 64) is not steered
    assert (calls[0] == calls[1]) is not steered
