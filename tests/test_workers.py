"""Benchmarks over pytest-xdist workers and shards: one saved run, equal ids, timed points, a dead
worker's point saved as an error, shards that split the grid."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
import transformers.models.qwen2.modeling_qwen2  # noqa: F401

from pytest_dlmbench.cli import main
from pytest_dlmbench.core import BenchPoint, MemoryReport, PointLabels, PointMetrics, Settings
from pytest_dlmbench.grid import deal, points_for
from pytest_dlmbench.roofline import ROOFLINE_KEYS
from pytest_dlmbench.scheduling import model_groups
from pytest_dlmbench.store import missing_shards
from pytest_dlmbench.workers import GPU_KEY, GpuSlots, gpu_slots, refuse_shared_gpu

GRID_TEST = """
def test_generation(dlm_bench, dlm_point):
    dlm_bench(dlm_point)
"""
SMALL = ("--dlm-prompt=16", "--dlm-gen=32", "--dlm-batch=1", "--dlm-rounds=2", "--dlm-warmup=1", "-p", "no:cacheprovider")
# Two strategies a paradigm, so both workers get points of every model.
STRATEGIES = "--dlm-strategies=baseline,parallel"
KILL_DLM_PARALLEL = """
import os
from pytest_dlmbench.runner import PointRunner


def pytest_configure(config):
    if not hasattr(config, "workerinput"):
        return  # only the workers' processes (the controller may be the test process itself)
    measure = PointRunner.measure

    def dying_measure(self, plan, progress):
        if plan.point.paradigm == "dlm" and plan.point.strategy == "parallel":
            os._exit(3)  # the worker process dies in the middle of the point, as an OOM kill would end it
        return measure(self, plan, progress)

    PointRunner.measure = dying_measure
"""


def saved(pytester: pytest.Pytester, name: str, *args: str) -> tuple[dict, pytest.RunResult]:
    result = pytester.runpytest(f"--benchmark-json={name}", *SMALL, *args)
    return json.loads((pytester.path / name).read_text()), result


def by_id(document: dict) -> dict[str, dict]:
    return {entry["fullname"]: entry for entry in document["benchmarks"] + document["dlmbench_failed"]}


def test_two_workers_save_one_run_with_the_ids_of_one_process_each_point_timed(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    one, result = saved(pytester, "one.json", STRATEGIES)
    assert result.ret == 0
    two, result = saved(pytester, "two.json", STRATEGIES, "-n", "2", "--dlm-journal=two.jsonl")
    assert result.ret == 0, result.stdout.str()
    assert set(by_id(two)) == set(by_id(one)) and len(two["benchmarks"]) == len(one["benchmarks"]) == 5
    assert "Benchmarks are automatically disabled" not in result.stdout.str() + result.stderr.str()
    for test_id, entry in by_id(two).items():
        info = entry["extra_info"]
        assert entry["stats"]["rounds"] == 2 == info["rounds"] == len(info["round_latencies_s"])
        assert entry["stats"]["min"] > 0 and info["tokens_per_s"] > 0
        assert info["nfe"] == by_id(one)[test_id]["extra_info"]["nfe"]
        assert info["worker"] in ("gw0", "gw1") and by_id(one)[test_id]["extra_info"]["worker"] is None
    assert {entry["extra_info"]["worker"] for entry in two["benchmarks"]} == {"gw0", "gw1"}
    assert "dlmbench" in result.stdout.str() and "test_generation[ar-tiny-ar-p16-g32-b1]" in result.stdout.str()
    assert main(["merge", str(pytester.path / "two.jsonl"), "--out", str(pytester.path / "journal.json")]) == 0
    assert set(by_id(json.loads((pytester.path / "journal.json").read_text()))) == set(by_id(one))


def test_the_session_gate_judges_the_workers_points(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    saved(pytester, "base.json", "--dlm-strategies=baseline")
    result = pytester.runpytest(*SMALL, "--dlm-strategies=baseline", "-n", "2", "--dlm-baseline=base.json",
                                "--dlm-gate=tokens_per_s:1000%")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*dlmbench gate*", "0 regression(s) against base.json"])
    assert result.stdout.str().count("ar-tiny-ar-p16-g32-b1") >= 2  # the summary table and the gate's


def test_the_default_gate_fails_a_2x_slower_run_of_workers(pytester, monkeypatch):
    pytester.makepyfile(test_grid=GRID_TEST)
    pytester.makeconftest((Path(__file__).parent / "slowdown_plugin.py").read_text())  # in every worker too
    monkeypatch.setenv("DLMBENCH_FORWARD_FLOOR_MS", "5")  # both runs: this CPU's drift moves a small part
    args = ("--dlm-paradigms=ar", "--dlm-prompt=16", "--dlm-gen=32", "-p", "no:cacheprovider", "-n", "2")  # default rounds, warm-up and gate
    assert pytester.runpytest(*args, "--benchmark-json=base.json").ret == 0
    monkeypatch.setenv("DLMBENCH_SLOWDOWN", "1.0")  # every forward takes twice as long
    slow = pytester.runpytest(*args, "--dlm-baseline=base.json")
    assert slow.ret == pytest.ExitCode.TESTS_FAILED, slow.stdout.str()
    slow.stdout.fnmatch_lines(["*ar-tiny-ar-p16-g32-b1]*tokens_per_s*regression",
                               "*ar-tiny-ar-p16-g32-b4]*tokens_per_s*regression", "2 regression(s) against base.json"])


def test_pytest_benchmarks_own_comparison_reads_the_workers_points(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    args = (*SMALL, "--dlm-strategies=baseline", "--dlm-models=tiny-ar")
    assert pytester.runpytest(*args, "--benchmark-save=base").ret == 0
    result = pytester.runpytest(*args, "-n", "2", "--benchmark-compare=0001", "--benchmark-compare-fail=mean:10000%")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    for source in ("0001_base", "NOW"):
        result.stdout.fnmatch_lines([f"*test_generation?ar-tiny-ar-p16-g32-b1? ({source})*"])


def test_a_worker_that_dies_loses_only_its_point_which_is_saved_as_an_error(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    pytester.makeconftest(KILL_DLM_PARALLEL)
    document, result = saved(pytester, "run.json", STRATEGIES, "-n", "2")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    points = by_id(document)
    dead = "test_grid.py::test_generation[dlm-tiny-dlm-p16-g32-b1-parallel]"
    assert len(points) == 5 and len(document["benchmarks"]) == 4
    assert [entry["fullname"] for entry in document["dlmbench_failed"]] == [dead]
    info = points[dead]["extra_info"]
    assert info["status"] == "error" and "crashed while running" in info["message"]
    assert info["paradigm"] == "dlm" and info["strategy"] == "parallel" and info["worker"] in ("gw0", "gw1")
    assert (info["dtype"], info["device"]) == ("fp32", "cpu")  # the session's resolved settings
    assert all(entry["stats"]["rounds"] == 2 for entry in document["benchmarks"])


KILL_FIRST_WORKER_BY_MODEL = """
import os
from pytest_dlmbench.plugin import model_scheduler
from pytest_dlmbench.runner import PointRunner


def pytest_xdist_make_scheduler(config, log):
    return model_scheduler(config, log)  # what --dlm-devices selects on a GPU machine


def pytest_configure(config):
    if getattr(config, "workerinput", {}).get("workerid") != "gw0":
        return  # only the first worker dies: its replacement must take up the rest
    measure = PointRunner.measure

    def dying_measure(self, plan, progress):
        if plan.point.paradigm == "dlm" and plan.point.strategy == "parallel":
            os.kill(os.getpid(), 9)
        return measure(self, plan, progress)

    PointRunner.measure = dying_measure
"""


def test_under_model_scheduling_a_dead_workers_replacement_runs_the_rest_but_not_its_point(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    pytester.makeconftest(KILL_FIRST_WORKER_BY_MODEL)
    document, result = saved(pytester, "run.json", STRATEGIES, "-n", "1", "--dlm-rounds=1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    workers = {entry["name"]: entry["extra_info"]["worker"] for entry in document["benchmarks"]}
    assert len(workers) == 4 and "gw1" in workers.values()
    assert [(entry["name"], entry["extra_info"]["worker"]) for entry in document["dlmbench_failed"]] == [
        ("test_generation[dlm-tiny-dlm-p16-g32-b1-parallel]", "gw0")]
    assert result.parseoutcomes()["failed"] == 1  # not run again, so not killed again


def test_a_bad_selection_in_the_workers_is_a_clear_error(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest(*SMALL, "-n", "2", "--dlm-prompt=17")
    assert result.ret != 0 and "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "UsageError: the --dlm-* filters select no point of the smoke grid" in result.stdout.str()


def test_shards_are_disjoint_cover_the_selection_and_merge_into_the_whole_run(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    whole, _ = saved(pytester, "whole.json", "--dlm-strategies=baseline")
    parts = []
    for index in (1, 2):
        part, result = saved(pytester, f"shard{index}.json", "--dlm-strategies=baseline", f"--dlm-shard={index}/2")
        assert result.ret == 0 and part["machine_info"]["dlmbench"]["shard"] == f"{index}/2"
        parts.append(set(by_id(part)))
    assert parts[0] and parts[1] and not parts[0] & parts[1] and parts[0] | parts[1] == set(by_id(whole))
    out = pytester.path / "merged.json"
    assert main(["merge", str(pytester.path / "shard1.json"), str(pytester.path / "shard2.json"), "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    assert set(by_id(merged)) == set(by_id(whole)) and merged["machine_info"]["dlmbench"]["shard"] is None


def test_merging_an_incomplete_set_of_shards_names_the_missing_one(pytester, capsys):
    pytester.makepyfile(test_grid=GRID_TEST)
    saved(pytester, "shard1.json", "--dlm-strategies=baseline", "--dlm-shard=1/3")
    out = pytester.path / "merged.json"
    assert main(["merge", str(pytester.path / "shard1.json"), "--out", str(out)]) == 0
    assert "no file holds shard 2/3" in capsys.readouterr().err
    assert json.loads(out.read_text())["machine_info"]["dlmbench"]["shard"] == "1/3"
    assert missing_shards(["1/3", "3/3"]) == ["2/3"] and missing_shards([None, None]) == []


def test_shard_slices_keep_the_runtimes_of_a_point_together():
    settings = Settings(grid="smoke", device="cpu", dtype="fp32", runtimes=("graphs", "eager"))
    whole = points_for(settings)
    slices = [points_for(Settings(**{**vars(settings), "shard": (index, 3)})) for index in (1, 2, 3)]
    assert sorted(p for s in slices for p in s) == sorted(whole)
    for part in slices:
        keys = {point.runtime_key for point in part}
        assert len(part) == 2 * len(keys) and all(not keys & {p.runtime_key for p in other}
                                                   for other in slices if other is not part)


def test_dealing_is_round_robin_over_points_with_their_runtimes_together():
    points = [BenchPoint("ar", "tiny-ar", 16, 32, batch, "baseline", runtime) for batch in (1, 2, 3)
              for runtime in ("graphs", "eager")]
    assert deal(points, 2) == [0, 0, 1, 1, 0, 0]


def test_model_groups_give_every_worker_a_share_of_every_model():
    points = {point.id: point for point in points_for(Settings(grid="smoke", device="cpu", dtype="fp32"))}
    groups = model_groups(points, 2)
    assert set(groups) == set(points)
    for test_id, group in groups.items():
        assert group.startswith(points[test_id].model + "#")
    assert set(groups.values()) == {f"{model}#{hand}" for model in ("tiny-ar", "tiny-dlm", "tiny-block")
                                    for hand in (0, 1)}


def test_gpu_slots_follow_the_devices_option_and_refuse_what_cannot_run():
    assert gpu_slots("all", 4, 2) == (0, 1, 2, 3)
    assert gpu_slots((1, 1, 3), 4, 3) == (1, 1, 3)
    with pytest.raises(ValueError, match="no CUDA device is visible"):
        gpu_slots("all", 0, 2)
    with pytest.raises(ValueError, match=r"--dlm-devices=0,5: no CUDA device 5; this machine has 2 \(0-1\)"):
        gpu_slots((0, 5), 2, 2)
    with pytest.raises(ValueError, match="-n 3 with --dlm-devices=0,1: 3 workers for 2 GPU"):
        gpu_slots((0, 1), 2, 3)


def test_a_worker_that_replaces_a_dead_one_takes_its_gpu():
    slots = GpuSlots((0, 0, 1))
    assert [slots.take(worker) for worker in ("gw0", "gw1", "gw2")] == [0, 0, 1]
    slots.give_back("gw2")
    assert slots.take("gw3") == 1
    assert slots.placement == {"gw0": 0, "gw1": 0, "gw2": 1, "gw3": 1}
    with pytest.raises(RuntimeError, match="no free GPU for pytest-xdist worker gw4"):
        slots.take("gw4")


def test_workers_on_cuda_without_devices_would_share_a_gpu_and_are_refused():
    def worker(gpu: int | None) -> SimpleNamespace:
        return SimpleNamespace(workerinput={"workerid": "gw0", "workercount": 2} | ({GPU_KEY: gpu} if gpu is not None else {}))

    on_cuda = Settings(device="cuda", gpu_index=0)
    with pytest.raises(pytest.UsageError, match="2 pytest-xdist workers would share cuda: pass --dlm-devices=all"):
        refuse_shared_gpu(worker(None), on_cuda)
    refuse_shared_gpu(worker(1), on_cuda)
    refuse_shared_gpu(worker(None), Settings(device="cpu"))


def test_a_record_survives_the_trip_to_the_controller():
    labels = PointLabels(BenchPoint("ar", "tiny-ar", 16, 32, 1), "random", "fp32", "cpu", worker="gw1")
    metrics = PointMetrics.failed(labels, {}, "error", "boom", MemoryReport(), {"mine": 1})
    metrics = PointMetrics(**{**vars(metrics), "round_latencies_s": (0.5, 0.6), "roofline": {"bound": "memory"}})
    back = PointMetrics.from_extra_info(json.loads(json.dumps(metrics.to_extra_info())), ROOFLINE_KEYS)
    assert back == metrics


@pytest.mark.parametrize(("options", "message"), [
    (["--dlm-devices=0"], "--dlm-devices=0: needs pytest-xdist workers (-n N)"),
    (["--dlm-devices=all", "-n", "2"], "--dlm-devices=all: no CUDA device is visible"),
    (["--dlm-devices=0,x"], "is not a device list; allowed: all, or CUDA indices"),
    (["--dlm-shard=3/2"], "'3/2' is not a shard; allowed: I/N with 1 <= I <= N"),
    (["--dlm-shard=9/9"], "--dlm-shard=9/9 selects no point: the selection has 3 point(s)"),
])
@pytest.mark.default_device  # where the default is the CPU: on CUDA machines it is skipped
def test_bad_devices_and_shards_are_usage_errors(pytester, options, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest(*SMALL, "--dlm-strategies=baseline", *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert message in result.stderr.str()
