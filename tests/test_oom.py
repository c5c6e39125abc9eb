"""Out-of-memory points are results: recorded, saved, skipped with a reason, and the run goes on
from the same memory baseline. Other failures are errors, never OOM."""

from __future__ import annotations

import json

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401

from pytest_dlmbench.store import load_run

INJECTED = """
import weakref
import pytest
import torch
from pytest_dlmbench.grid import BenchPoint

freed = []

@pytest.mark.parametrize("batch", [1, 4, 2])
def test_point(dlm_bench, batch):
    def generate(prompt_ids):
        scratch = torch.ones(16 * 2**20)  # 64 MiB held by the failing frame
        if prompt_ids.shape[0] == 4:
            freed.append(weakref.ref(scratch))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if prompt_ids.shape[0] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return torch.zeros(prompt_ids.shape[0], 8, dtype=torch.long)
    metrics = dlm_bench(BenchPoint("mine", "m", 4, 8, batch), generate=generate, vocab_size=50)
    assert metrics.status == "ok" and metrics.tokens_generated == 8 * batch
    if batch == 2:
        assert freed and freed[0]() is None, "the OOM point's tensors are still alive"

def test_other_failures_are_errors(dlm_bench):
    def generate(prompt_ids):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    dlm_bench(BenchPoint("mine", "m", 4, 8, 3), generate=generate, vocab_size=50)
"""


def test_injected_oom_is_saved_skipped_and_the_run_goes_on(pytester):
    pytester.makepyfile(test_injected=INJECTED)
    result = pytester.runpytest("--dlm-rounds=2", "--benchmark-save=run", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=2, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*SKIPPED*OOM: mine-m-p4-g8-b4 (OutOfMemoryError: CUDA out of memory*"])
    [saved] = (pytester.path / ".benchmarks").rglob("*.json")
    data = json.loads(saved.read_text())
    assert [b["extra_info"]["batch_size"] for b in data["benchmarks"]] == [1, 2]
    failed = {entry["name"]: entry["extra_info"] for entry in data["dlmbench_failed"]}
    oom, error = failed["test_point[4]"], failed["test_other_failures_are_errors"]
    assert oom["status"] == "oom" and oom["tokens_per_s"] is None and oom["peak_rss_bytes"] > 0
    assert "Tried to allocate 2.00 GiB" in oom["message"]
    assert error["status"] == "error" and "illegal memory access" in error["message"]
    points = load_run(saved).points
    assert points["test_injected.py::test_point[4]"]["status"] == "oom" and len(points) == 4
