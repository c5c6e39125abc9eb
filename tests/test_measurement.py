"""Timers, memory trackers, metrics and the command line, on the CPU."""

from __future__ import annotations

import time

import pytest
import torch

from pytest_dlmbench import __version__
from pytest_dlmbench.cli import main
from pytest_dlmbench.core import BenchPoint, PointLabels
from pytest_dlmbench.grid import GRIDS, select_points
from pytest_dlmbench.memory import MemoryReport, MemoryTracker, MemoryWarning, nvml_handle
from pytest_dlmbench.core import PointMetrics
from pytest_dlmbench.runner import Progress
from pytest_dlmbench.timing import RegionTimer

CPU = torch.device("cpu")


def test_region_timer_times_each_region_in_order():
    timer = RegionTimer(CPU)
    for seconds in (0.01, 0.03):
        with timer.region("step"):
            time.sleep(seconds)
    with timer.region("prefill"):
        pass
    read = timer.read()
    assert list(read) == ["step", "prefill"]
    assert read["step"][0] >= 10 and read["step"][1] >= 30 and read["step"][1] > read["step"][0]


def test_cpu_memory_tracker_sees_a_large_allocation():
    with MemoryTracker(CPU) as tracker:
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB touched
        time.sleep(0.05)
        del block
    report = tracker.report
    assert report.peak_rss_bytes is not None and report.peak_rss_bytes > 64 * 2**20
    assert report.peak_allocated_bytes is None and report.nvml_peak_used_bytes is None


def test_failing_nvml_gives_null_and_a_warning(monkeypatch):
    import pynvml

    def broken() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    with pytest.warns(MemoryWarning, match="NVML unavailable"):
        assert nvml_handle(torch.device("cuda", 0)) is None


def test_metrics_follow_the_definitions():
    labels = PointLabels(BenchPoint("dlm", "tiny-dlm", 40, 64, 4), "random", "fp32", "cpu")
    metrics = PointMetrics.from_run(
        labels, describe={"block_size": 32, "steps": 64},
        latencies_s=[2.0, 1.0, 4.0], nfe=64, forward_ms={"prefill": [9.0], "step": [1.0, 3.0]},
        memory=MemoryReport(peak_rss_bytes=123), warmup_rounds=1,
    )
    assert metrics.latency_s == 2.0 and metrics.tokens_per_s == 4 * 64 / 2.0
    assert metrics.tokens_per_forward == 1.0 and metrics.ms_per_forward == 2.0 and metrics.prefill_ms == 9.0
    assert metrics.peak_bytes == 123 and metrics.to_extra_info()["round_latencies_s"] == [2.0, 1.0, 4.0]


def test_progress_reports_long_points_only():
    lines: list[str] = []
    quiet = Progress(lines.append, "p", interval_s=3600)
    quiet(1)
    assert lines == []
    chatty = Progress(lines.append, "dlm-x", interval_s=0)
    chatty.phase = "round 1/3"
    chatty(7)
    assert lines and "dlm-x: round 1/3, 7 forwards" in lines[0]


def test_standard_grid_is_the_issue_grid():
    points = select_points(GRIDS["standard"])
    assert len(points) == 3 * 2 * 5
    assert BenchPoint("dlm", "llada-8b", 920, 256, 16) in points
    assert BenchPoint("dlm", "llada-8b", 920, 256, 16).id == "dlm-llada-8b-p920-g256-b16"
    paper = select_points(GRIDS["paper"], paradigms=["ar"], prompt_lens=(40,))
    assert {p.gen_len for p in paper} == {64, 128, 256, 512, 1024, 2048}
    assert {p.batch_size for p in paper} == {1, 2, 4, 8, 16, 20, 24, 32, 64}


def test_cli_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "--benchmark-save=NAME" in " ".join(capsys.readouterr().out.split())


def test_device_state_reads_clocks_reasons_and_other_processes(monkeypatch):
    import os
    from types import SimpleNamespace

    import pynvml

    from pytest_dlmbench.memory import device_state
    from pytest_dlmbench.core import device_state_fields

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", lambda h: 0x4 | 0x40, raising=False)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetClockInfo", lambda h, kind: 1980 if kind == pynvml.NVML_CLOCK_SM else 2619)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda h: [
        SimpleNamespace(pid=os.getpid(), usedGpuMemory=10 * 2**30), SimpleNamespace(pid=-7, usedGpuMemory=2**30)])
    state = device_state(object())
    assert state == {"sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "other_processes_bytes": 2**30,
                     "clock_event_reasons": ["sw_power_cap", "hw_thermal_slowdown"]}
    fields = device_state_fields(MemoryReport(state_start=state, state_end=state))
    assert fields["clock_event_reasons_end"] == ("sw_power_cap", "hw_thermal_slowdown")
    assert fields["sm_clock_mhz_start"] == 1980 and fields["other_processes_bytes"] == 2**30
