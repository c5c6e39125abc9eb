"""Timers, memory trackers, metrics and the command line, on the CPU."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from pytest_dlmbench import __version__
from pytest_dlmbench.cli import main
from pytest_dlmbench.core import BenchPoint, EnergyReading, PointLabels
from pytest_dlmbench.energy import EnergyMeter
from pytest_dlmbench.grid import GRIDS, select_points
from pytest_dlmbench.memory import MemoryReport, MemoryTracker, MemoryWarning, nvml_handle
from pytest_dlmbench.core import PointMetrics
from pytest_dlmbench.paradigms.base import commit_times
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


def test_region_timer_says_when_each_region_ended():
    timer = RegionTimer(CPU)
    time.sleep(0.02)
    with timer.region("prefill"):
        time.sleep(0.01)
    with timer.region("decode"):
        pass
    ends = timer.ends_ms()
    assert len(ends) == 2 and ends[0] >= 30 and ends[1] >= ends[0]
    assert timer.ends_ms() == ends  # read again, unchanged


def test_commit_times_are_each_rows_first_and_last_committing_forward():
    committing = torch.tensor([[True, False], [False, False], [True, True], [False, True]])  # (steps, batch)
    first, last = commit_times(committing, step_forwards=[1, 2, 4, 5], ends_ms=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert first == [2.0, 5.0] and last == [5.0, 6.0]
    first, last = commit_times(torch.tensor([[True, False]]), step_forwards=[0], ends_ms=[1.0])
    assert first[0] == last[0] == 1.0 and math.isnan(first[1]) and math.isnan(last[1])  # row 1 committed nothing


def test_energy_meter_reads_the_counter_over_its_body():
    readings = iter([1_000, 3_500])
    with EnergyMeter(CPU, counter=lambda: next(readings)) as meter:
        pass
    assert meter.reading.joules == 2.5 and meter.reading.reason is None and meter.reading.window_s >= 0


def test_energy_is_null_with_the_reason_where_it_cannot_be_read(monkeypatch):
    with EnergyMeter(CPU) as meter:
        pass
    assert meter.reading.joules is None and "no energy counter on cpu" in meter.reading.reason
    with EnergyMeter(CPU, counter=lambda: 7) as meter:
        pass
    assert meter.reading.joules is None and "did not advance" in meter.reading.reason
    import pynvml

    def unsupported(handle: object) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr("pytest_dlmbench.energy.nvml_device", lambda device: object())
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", unsupported)
    monkeypatch.setattr("pytest_dlmbench.energy.synchronize", lambda device: None)
    with EnergyMeter(torch.device("cuda", 0)) as meter:
        pass
    assert meter.reading.joules is None and "counter unavailable: NVMLError" in meter.reading.reason


def test_energy_per_token_counts_every_round():
    labels = PointLabels(BenchPoint("ar", "tiny-ar", 8, 16, 4), "random", "fp32", "cpu")
    metrics = PointMetrics.from_run(labels, describe={}, latencies_s=[1.0, 1.0], nfe=16, forward_ms={},
                                    memory=MemoryReport(), warmup_rounds=1,
                                    energy=EnergyReading(joules=64.0, window_s=2.0))
    assert metrics.joules_per_token == 64.0 / (4 * 16 * 2) and metrics.tokens_per_joule == 2.0
    assert metrics.mean_power_w == 32.0 and metrics.energy_reason is None


LATENCY = """
import time
import torch
from pytest_dlmbench.core import BenchPoint

def test_logged(dlm_bench):
    def generate(prompt_ids, log):
        for kind in ("prefill", "decode", "decode"):
            with log.forward(kind, 1, 1, 1, "causal", 1):
                time.sleep(0.05)
        return torch.zeros(prompt_ids.shape[0], 3, dtype=torch.long)
    dlm_bench(BenchPoint("mine", "m", 4, 3, 2), generate=generate, vocab_size=50)

def test_unlogged(dlm_bench):
    dlm_bench(BenchPoint("plain", "m", 4, 3, 2), generate=lambda ids: torch.zeros(2, 3, dtype=torch.long),
              vocab_size=50)

def test_dlm(dlm_bench):
    dlm_bench(BenchPoint("dlm", "tiny-dlm", 8, 32, 4, strategy="parallel"))
"""


def test_points_record_time_to_first_token_and_request_latency_percentiles(pytester):
    pytester.makepyfile(test_latency=LATENCY)
    result = pytester.runpytest("--dlm-rounds=3", "--dlm-tpf=4", "--benchmark-json=run.json", "-p",
                                "no:cacheprovider")
    result.assert_outcomes(passed=3)
    runs = {b["name"]: b["extra_info"] for b in json.loads((pytester.path / "run.json").read_text())["benchmarks"]}
    logged, unlogged, dlm = runs["test_logged"], runs["test_unlogged"], runs["test_dlm"]
    # the first token is out after the first of three 50 ms forwards, the request after the third
    assert 0.05 <= logged["ttft_s"] < logged["request_latency_p50_s"] and logged["request_latency_p50_s"] >= 0.15
    assert logged["request_latency_p99_s"] <= max(logged["round_latencies_s"])
    assert unlogged["ttft_s"] is None
    assert unlogged["request_latency_p50_s"] == pytest.approx(sorted(unlogged["round_latencies_s"])[1])
    assert 0 < dlm["ttft_s"] < dlm["request_latency_p50_s"] <= dlm["request_latency_p90_s"]
    assert dlm["request_latency_p90_s"] <= dlm["request_latency_p99_s"] <= max(dlm["round_latencies_s"])
    for info in runs.values():
        assert info["energy_j"] is None and info["tokens_per_joule"] is None and "cpu" in info["energy_reason"]
