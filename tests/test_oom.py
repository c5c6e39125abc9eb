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
from pytest_dlmbench.core import BenchPoint

freed = []

@pytest.mark.parametrize("batch", [1, 4, 2])
def test_point(dlm_bench, batch):
    def generate(prompt_ids):
        scratch = torch.ones(16 * 2**20)  # 64 MiB held by the failing frame
        if prompt_ids.shape[0] == 4:
            freed.extend((weakref.ref(scratch), weakref.ref(prompt_ids)))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if prompt_ids.shape[0] == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return torch.zeros(prompt_ids.shape[0], 8, dtype=torch.long)
    metrics = dlm_bench(BenchPoint("mine", "m", 4, 8, batch), generate=generate, vocab_size=50)
    assert metrics.status == "ok" and metrics.tokens_generated == 8 * batch
    if batch == 2:
        assert freed and all(ref() is None for ref in freed), "the OOM point's tensors are still alive"

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


REAL_CUDA_OOM = """
import pytest
import torch
from pytest_dlmbench.core import BenchPoint

allocated_before = []

@pytest.mark.parametrize("batch", [1, 200_000, 1], ids=["before", "oom", "after"])
def test_point(dlm_bench, batch):
    allocated_before.append(torch.cuda.memory_allocated())
    dlm_bench(BenchPoint("ar", "tiny-ar", 8, 16, batch))
    if len(allocated_before) == 3:
        assert allocated_before[2] == allocated_before[1], allocated_before  # [0]: before the model loaded
"""


@pytest.mark.cuda
def test_a_real_cuda_oom_leaves_later_points_unaffected(pytester):
    """A genuine allocator OOM on the GPU (batch 200k under a 1 GiB cap) between two identical
    points: the later one starts from the same allocated and device-wide memory and peaks within 1 MiB."""
    pytester.makepyfile(test_cuda_oom=REAL_CUDA_OOM)
    # Its own process: in this one, the GPU tests before it hold memory against the 1 GiB cap.
    result = pytester.runpytest_subprocess("--dlm-device=cuda", "--dlm-memory-limit=1", "--dlm-rounds=1",
                                           "--benchmark-json=run.json", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=2, skipped=1)
    data = json.loads((pytester.path / "run.json").read_text())
    before, after = (b["extra_info"] for b in data["benchmarks"])
    [oom] = (entry["extra_info"] for entry in data["dlmbench_failed"])
    print({key: (before[key], after[key]) for key in ("peak_mem_allocated_bytes", "nvml_baseline_used_bytes")})
    assert oom["status"] == "oom" and "out of memory" in oom["message"].lower()
    # The caching allocator hands out a cached block whole when its rest is too small to split (under
    # 1 MiB in the large pool), so identical work can peak a few KiB apart; a leaked cuBLAS workspace is 32 MiB.
    assert abs(after["peak_mem_allocated_bytes"] - before["peak_mem_allocated_bytes"]) < 2**20
    assert abs(after["nvml_baseline_used_bytes"] - before["nvml_baseline_used_bytes"]) <= 32 * 2**20
