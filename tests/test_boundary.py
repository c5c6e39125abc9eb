"""The OOM boundary search: exact on an injected boundary, O(log n) probes, cheap probes."""

from __future__ import annotations

import json
import math

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch

from helpers import new_log, on, prompt, tiny
from pytest_dlmbench.boundary import ProbeResult, find_max_batch
from pytest_dlmbench.paradigms import DecodeOptions, make_paradigm
from pytest_dlmbench.store import load_run


@pytest.mark.parametrize("boundary", [0, 1, 2, 37, 511, 512, 1000, 1024, 4096])
@pytest.mark.parametrize("max_batch", [1024, 1000])
def test_search_finds_an_injected_boundary_exactly_with_log_probes(boundary, max_batch):
    asked: list[int] = []

    def probe(batch: int) -> ProbeResult:
        asked.append(batch)
        return ProbeResult(batch, batch <= boundary)

    found = find_max_batch(probe, max_batch)
    assert found.max_batch_size == min(boundary, max_batch)
    assert found.first_oom_batch == (boundary + 1 if boundary < max_batch else None)
    assert len(asked) == len(set(asked)) <= 2 * math.ceil(math.log2(max_batch)) + 1
    assert [p.batch_size for p in found.probes] == sorted(asked)


@pytest.mark.parametrize(("model_name", "strategy", "most_forwards"), [
    ("tiny-ar", "baseline", 3), ("tiny-dlm", "baseline", 3), ("tiny-dlm", "dual_cache", 3),
    ("tiny-block", "baseline", 2 * 4 * 2 + 2), ("tiny-block", "parallel+subblock_cache", 2 * 4 * 3 + 2),
])
@pytest.mark.parametrize("prompt_len", [40, 64])  # the last block partial, and whole
def test_probes_are_a_few_forwards_and_run_every_forward_shape_of_the_peak(model_name, strategy, most_forwards,
                                                                           prompt_len):
    """A probe reaches the peak if it runs every forward shape the full generation runs on its
    largest context (and the prefill): the memory of a forward follows from its shape."""
    spec, model = tiny(model_name)
    paradigm = make_paradigm(spec.paradigm, DecodeOptions(tpf=3.0), strategy)
    probe_log, full_log = new_log(), new_log()
    with torch.inference_mode():
        paradigm.probe(on(model), spec, prompt(spec, 2, prompt_len), 256, probe_log)
        paradigm.generate(on(model), spec, prompt(spec, 2, prompt_len), 256, full_log)
    assert 1 <= probe_log.nfe <= most_forwards

    def shapes(log, context):
        return {(s.kind, s.tokens, s.logits, s.kv_written) for s in log.shapes if s.context == context or s.kind == "prefill"}

    largest = max(s.context for s in full_log.shapes)
    assert max(s.context for s in probe_log.shapes) == largest
    assert shapes(full_log, largest) <= shapes(probe_log, largest)


CONFTEST = """
import pytest
import torch
from pytest_dlmbench.paradigms.ar import AutoregressiveDecoder

FITS = 5  # a device that holds this many sequences and no more
FULL_GENERATION_FITS = True

@pytest.fixture(autouse=True, scope="session")
def small_device():
    real_probe, real_generate = AutoregressiveDecoder.probe, AutoregressiveDecoder.generate

    def probe(self, model, spec, prompt_ids, gen_len, log):
        if prompt_ids.shape[0] > FITS:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_probe(self, model, spec, prompt_ids, gen_len, log)

    def generate(self, model, spec, prompt_ids, gen_len, log):
        if prompt_ids.shape[0] == FITS and not FULL_GENERATION_FITS:  # the probe fitted (fragmentation)
            raise torch.OutOfMemoryError("CUDA out of memory (injected in the full generation)")
        return real_generate(self, model, spec, prompt_ids, gen_len, log)

    with pytest.MonkeyPatch.context() as patch:  # undone after the run: pytester runs share modules
        patch.setattr(AutoregressiveDecoder, "probe", probe)
        patch.setattr(AutoregressiveDecoder, "generate", generate)
        yield
"""
BOUNDARY_TEST = """
def test_oom_boundary(dlm_boundary, dlm_boundary_point):
    dlm_boundary(dlm_boundary_point)
"""
GRID_TEST = """
def test_generation(dlm_bench, dlm_point):
    dlm_bench(dlm_point)
"""


def test_boundary_benchmark_saves_the_search(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST)
    result = pytester.runpytest("--dlm-boundary", "--dlm-paradigms=ar", "--dlm-prompt=16", "--dlm-max-batch=64",
                                "--dlm-isolate=off", "--dlm-rounds=1", "--benchmark-json=out.json",
                                "--dlm-journal=points.jsonl", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    [bench] = json.loads((pytester.path / "out.json").read_text())["benchmarks"]
    journaled = load_run(pytester.path / "points.jsonl")  # its parameter, a BenchPoint, is no JSON type
    assert journaled.points == load_run(pytester.path / "out.json").points
    info = bench["extra_info"]
    assert bench["name"] == "test_oom_boundary[ar-tiny-ar-p16-g32]"
    assert info["max_batch_size"] == 5 and info["first_oom_batch"] == 6 and info["batch_size"] == 5
    assert info["boundary_probe_batches"] == [1, 2, 4, 5, 6, 8] and info["tokens_per_s"] > 0
    assert info["probe_ms_per_forward_at_max"] > 0 and info["estimated_generation_s"] > 0


def test_a_boundary_too_slow_to_generate_in_full_is_saved_untimed(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST)
    result = pytester.runpytest("--dlm-boundary", "--dlm-paradigms=ar", "--dlm-prompt=16", "--dlm-max-batch=64",
                                "--dlm-isolate=off", "--dlm-rounds=1", "--dlm-max-time=0.000001",
                                "--benchmark-json=out.json", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*boundary ar-tiny-ar-p16-g32: max batch 5; a full generation there would take *"
                                 "over --dlm-max-time=1e-06: not timed*"])
    saved = json.loads((pytester.path / "out.json").read_text())
    [failed] = saved["dlmbench_failed"]
    info = failed["extra_info"]
    assert saved["benchmarks"] == [] and info["status"] == "untimed" and info["tokens_per_s"] is None
    assert info["max_batch_size"] == info["batch_size"] == 5 and info["first_oom_batch"] == 6
    assert info["estimated_generation_s"] > 0 and info["probe_ms_per_forward_at_max"] > 0


def test_a_point_that_never_fits_is_saved_as_oom(pytester):
    pytester.makeconftest(CONFTEST.replace("FITS = 5", "FITS = 0"))
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST + GRID_TEST)
    result = pytester.runpytest("--dlm-boundary", "--dlm-paradigms=ar", "--dlm-prompt=16", "--dlm-gen=32",
                                "--dlm-batch=1", "--dlm-max-batch=8", "--dlm-isolate=off", "--dlm-rounds=1",
                                "--benchmark-json=out.json", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*OOM: ar-tiny-ar-p16-g32 does not fit at batch 1*"])
    [failed] = json.loads((pytester.path / "out.json").read_text())["dlmbench_failed"]
    info = failed["extra_info"]
    assert failed["name"] == "test_oom_boundary[ar-tiny-ar-p16-g32]" and info["status"] == "oom"
    assert info["max_batch_size"] == 0 and info["first_oom_batch"] == 1 and info["batch_size"] == 1


def test_boundary_ids_and_records_name_the_runtime_and_fidelity_that_ran(pytester):
    """Each runtime and fidelity is a boundary of its own, and a record that never ran a timed
    generation (here: none fits) still says which it was."""
    pytester.makeconftest(CONFTEST.replace("FITS = 5", "FITS = 0"))
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST)
    result = pytester.runpytest("--dlm-boundary", "--dlm-paradigms=ar", "--dlm-prompt=16", "--dlm-max-batch=8",
                                "--dlm-isolate=off", "--dlm-runtime=all", "--dlm-fidelity=all",
                                "--benchmark-json=out.json", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=4)
    failed = json.loads((pytester.path / "out.json").read_text())["dlmbench_failed"]
    labels = {entry["name"]: (entry["extra_info"]["runtime"], entry["extra_info"]["fidelity"]) for entry in failed}
    assert labels == {
        "test_oom_boundary[ar-tiny-ar-p16-g32]": ("graphs", "reference"),
        "test_oom_boundary[ar-tiny-ar-p16-g32-lean]": ("graphs", "lean"),
        "test_oom_boundary[ar-tiny-ar-p16-g32-eager]": ("eager", "reference"),
        "test_oom_boundary[ar-tiny-ar-p16-g32-eager-lean]": ("eager", "lean"),
    }


def test_a_full_generation_that_runs_out_of_memory_keeps_the_search(pytester):
    pytester.makeconftest(CONFTEST.replace("FULL_GENERATION_FITS = True", "FULL_GENERATION_FITS = False"))
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST)
    result = pytester.runpytest("--dlm-boundary", "--dlm-paradigms=ar", "--dlm-prompt=16", "--dlm-max-batch=64",
                                "--dlm-isolate=off", "--dlm-rounds=1", "--benchmark-json=out.json",
                                "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*OOM: ar-tiny-ar-p16-g32-b5 (OutOfMemoryError: *in the full generation*"])
    [failed] = json.loads((pytester.path / "out.json").read_text())["dlmbench_failed"]
    info = failed["extra_info"]
    assert info["status"] == "oom" and info["batch_size"] == 5
    assert info["max_batch_size"] == 5 and info["first_oom_batch"] == 6 and info["probe_ms_per_forward_at_max"] > 0


def test_boundary_is_off_unless_asked(pytester):
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*the OOM boundary search runs with --dlm-boundary*"])


def test_isolated_probes_run_in_fresh_processes(pytester):
    pytester.makepyfile(test_boundary_run=BOUNDARY_TEST)
    result = pytester.runpytest("--dlm-boundary", "--dlm-paradigms=dlm", "--dlm-strategies=baseline",
                                "--dlm-prompt=16", "--dlm-max-batch=3", "--dlm-isolate=on", "--dlm-rounds=1",
                                "--benchmark-json=out.json", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["isolated_probes"] is True and info["max_batch_size"] == 3 and info["first_oom_batch"] is None


def test_memory_prediction_grows_with_batch_and_cache():
    from pytest_dlmbench.memory_model import predicted_max_batch, predicted_peak_bytes
    from pytest_dlmbench.models import get_spec

    spec = get_spec("llada-8b")
    plain = make_paradigm("dlm", DecodeOptions(), "baseline").memory_phases(spec, 920, 256)
    cached = make_paradigm("dlm", DecodeOptions(), "dual_cache").memory_phases(spec, 920, 256)
    weights = predicted_peak_bytes(spec, plain, 0, "bf16")
    assert weights == pytest.approx(8.016e9 * 2, rel=1e-3)
    assert predicted_peak_bytes(spec, plain, 16, "bf16") > predicted_peak_bytes(spec, plain, 1, "bf16") > weights
    assert predicted_peak_bytes(spec, cached, 16, "bf16") > predicted_peak_bytes(spec, plain, 16, "bf16")
    # the cache is filled by one forward, with no layer copied: exactly its KV bytes per sequence
    kv_bytes = (920 + 256) * spec.num_layers * 2 * spec.num_kv_heads * spec.head_dim * 2
    assert predicted_peak_bytes(spec, cached, 1, "bf16") - predicted_peak_bytes(spec, plain, 1, "bf16") == kv_bytes
    fits = predicted_max_batch(spec, cached, "bf16", 24 * 2**30)
    assert predicted_peak_bytes(spec, cached, fits, "bf16") <= 24 * 2**30 < predicted_peak_bytes(spec, cached, fits + 1, "bf16")
