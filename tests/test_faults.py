"""Faults and bad input: a stopped run is saved partial and never gates; a gate that compares
nothing does not pass; outputs are checked before anything runs; a user's generate, the baseline's
types and every option value are checked; files are strict JSON; no probe outlives its search."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401

from pytest_dlmbench.cli import main
from pytest_dlmbench.core import BenchPoint, MemoryReport, PointLabels, PointMetrics
from pytest_dlmbench.gate import EXIT_BROKEN_INPUT, EXIT_CRASH, EXIT_NOTHING_COMPARED, NOTHING_COMPARED_PYTEST
from pytest_dlmbench.store import PARTIAL_KEY, RunFileError, benchmark_compare_file, load_run

POINTS = """
import os
import pytest
import torch
from pytest_dlmbench.core import BenchPoint

@pytest.mark.parametrize("name", os.environ.get("POINTS", "a,b").split(","))
def test_point(dlm_bench, name):
    def generate(prompt_ids):
        if name == os.environ.get("INTERRUPT_AT"):
            raise KeyboardInterrupt  # Ctrl-C in the middle of a point
        open("ran", "a").write(name)
        return torch.zeros(prompt_ids.shape[0], 8, dtype=torch.long)
    dlm_bench(BenchPoint("mine", "m-" + name, 4, 8, 1), generate=generate, vocab_size=50)
"""
RUN = ("--dlm-rounds=2", "-p", "no:cacheprovider")


def saved_names(pytester) -> list[str]:
    return sorted(path.name for path in (pytester.path / ".benchmarks").rglob("*.json"))


def test_an_interrupted_run_is_saved_partial_and_never_picked_as_a_baseline(pytester, monkeypatch):
    pytester.makepyfile(test_points=POINTS)
    assert pytester.runpytest(*RUN, "--benchmark-save=base").ret == 0
    monkeypatch.setenv("INTERRUPT_AT", "b")
    cut = pytester.runpytest(*RUN, "--benchmark-save=cut", no_reraise_ctrlc=True)
    assert cut.ret == pytest.ExitCode.INTERRUPTED
    names = saved_names(pytester)
    assert names[0] == "0001_base.json" and names[1].startswith("partial-") and names[1].endswith("_cut.json")
    [partial] = (pytester.path / ".benchmarks").rglob("partial-*.json")
    document = json.loads(partial.read_text())
    assert "interrupted" in document[PARTIAL_KEY]
    assert [bench["extra_info"]["model"] for bench in document["benchmarks"]] == ["m-a"]  # no empty point

    monkeypatch.delenv("INTERRUPT_AT")
    gated = pytester.runpytest(*RUN, "--benchmark-compare", "--dlm-gate=tokens_per_s:50%")
    assert gated.ret == 0, gated.stdout.str()
    gated.stdout.fnmatch_lines(["*0 regression(s) against *0001_base.json"])
    refused = pytester.runpytest(*RUN, f"--dlm-baseline={partial}")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "a partial run (stopped before the selection ended: interrupted), not a baseline" in refused.stderr.str()
    assert main(["compare", str(partial), str(partial)]) == EXIT_BROKEN_INPUT


def test_a_gate_that_compares_nothing_fails_with_its_own_exit_code(pytester, monkeypatch, capsys):
    pytester.makepyfile(test_points=POINTS)
    monkeypatch.setenv("POINTS", "a")
    assert pytester.runpytest(*RUN, "--benchmark-json=base.json").ret == 0
    monkeypatch.setenv("POINTS", "b")
    result = pytester.runpytest(*RUN, "--benchmark-json=new.json", "--dlm-baseline=base.json")
    assert result.ret == NOTHING_COMPARED_PYTEST
    result.stdout.fnmatch_lines(["*no point of this run matches a point of base.json: nothing was compared*"])
    base, new = (str(pytester.path / name) for name in ("base.json", "new.json"))
    assert main(["compare", base, new]) == EXIT_NOTHING_COMPARED
    assert "nothing was compared" in capsys.readouterr().err
    assert main(["compare", base, base]) == 0


def test_compare_help_names_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["compare", "--help"])
    assert done.value.code == 0
    assert "3 no point of NEW matches one of BASE" in capsys.readouterr().out


@pytest.mark.parametrize(("option", "message"), [
    ("--benchmark-save=run", "--benchmark-save: cannot write in"),
    # pytest-benchmark < 5.3 opens the file itself, as its option's argparse type
    ("--benchmark-json=nowhere/run.json", ("--benchmark-json: folder", "argument --benchmark-json: can't open")),
])
def test_outputs_that_cannot_be_written_are_usage_errors_before_any_point(pytester, option, message):
    pytester.makepyfile(test_points=POINTS)
    (pytester.path / "blocked").write_text("a file where the storage folder should be")
    result = pytester.runpytest(*RUN, "--benchmark-storage=file://blocked/results", option)
    messages = (message,) if isinstance(message, str) else message
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stderr.str()
    assert any(text in result.stderr.str() for text in messages), result.stderr.str()
    assert not (pytester.path / "ran").exists()


def test_a_user_generate_must_return_the_points_tokens(pytester):
    pytester.makepyfile(test_short="""
import torch
from pytest_dlmbench.core import BenchPoint

def test_short(dlm_bench):
    dlm_bench(BenchPoint("mine", "m", 4, 16, 1), generate=lambda ids: torch.zeros(1, 3, dtype=torch.long),
              vocab_size=50)
""")
    result = pytester.runpytest(*RUN, "--benchmark-json=out.json")
    result.assert_outcomes(failed=1)
    [failed] = json.loads((pytester.path / "out.json").read_text())["dlmbench_failed"]
    assert failed["extra_info"]["status"] == "error" and failed["extra_info"]["tokens_per_s"] is None
    assert "shape (1, 3); the point needs token ids of shape (batch_size, gen_len) = (1, 16)" in \
        failed["extra_info"]["message"]


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("gen_len", -4), ("prompt_len", 0),
                                              ("batch_size", 1.5)])
def test_a_point_needs_positive_lengths_and_batch(field, value):
    values = {"prompt_len": 4, "gen_len": 8, "batch_size": 1, field: value}
    with pytest.raises(ValueError, match=f"BenchPoint {field}={value!r}: must be an integer >= 1"):
        BenchPoint("mine", "m", **values)


def test_gsm8k_loads_offline_once_and_a_failure_is_not_retried(monkeypatch, tmp_path):
    import datasets
    import huggingface_hub.constants

    from pytest_dlmbench import prompts

    seen = []

    def missing(path):
        seen.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
                     os.environ["HF_DATASETS_OFFLINE"]))
        raise ConnectionError("would have gone to the network")

    monkeypatch.setattr(datasets, "load_from_disk", missing)
    (tmp_path / "state.json").write_text("{}")
    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
              os.environ.get("HF_DATASETS_OFFLINE"))
    for _ in range(2):
        with pytest.raises(prompts.PromptError, match="no GSM8K dataset at"):
            prompts.load_gsm8k(str(tmp_path))
    assert seen == [(True, True, "1")]  # offline while loading, and loaded once
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE,
            os.environ.get("HF_DATASETS_OFFLINE")) == before


def test_benchmark_compare_picks_the_file_pytest_benchmark_compares(tmp_path, monkeypatch):
    from pytest_benchmark.utils import get_machine_id

    folder = tmp_path / get_machine_id()
    folder.mkdir()
    for name in ("0001_main.json", "0002_main.json", "0003_fix1.json"):
        (folder / name).write_text("{}")
    storage = f"file://{tmp_path}"
    assert benchmark_compare_file(storage, True).name == "0003_fix1.json"
    assert benchmark_compare_file(storage, "0001").name == "0001_main.json"
    assert benchmark_compare_file(storage, "0003").name == "0003_fix1.json"
    with pytest.raises(RunFileError, match="no saved run matches --benchmark-compare=1"):
        benchmark_compare_file(storage, "1")  # a prefix, as pytest-benchmark's glob: not 0003_fix1


@pytest.mark.parametrize(("key", "value"), [("tokens_per_s", "fast"), ("round_latencies_s", "1,2"),
                                            ("status", 0), ("latency_s", True)])
def test_a_baseline_with_a_wrongly_typed_key_is_refused_up_front(pytester, key, value):
    pytester.makepyfile(test_points=POINTS)
    assert pytester.runpytest(*RUN, "--benchmark-json=base.json").ret == 0
    base = pytester.path / "base.json"
    document = json.loads(base.read_text())
    document["benchmarks"][0]["extra_info"][key] = value
    base.write_text(json.dumps(document))
    with pytest.raises(RunFileError, match=f"{key} is {value!r}, not a"):
        load_run(base)
    ran = (pytester.path / "ran").read_text()
    result = pytester.runpytest(*RUN, "--dlm-baseline=base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and (pytester.path / "ran").read_text() == ran  # nothing ran
    assert main(["compare", str(base), str(base)]) == EXIT_BROKEN_INPUT


def test_a_crash_in_compare_is_not_read_as_a_regression(pytester, monkeypatch):
    pytester.makepyfile(test_points=POINTS)
    assert pytester.runpytest(*RUN, "--benchmark-json=base.json").ret == 0

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr("pytest_dlmbench.cli.compare", broken)
    assert main(["compare", str(pytester.path / "base.json"), str(pytester.path / "base.json")]) == EXIT_CRASH


@pytest.mark.parametrize(("option", "message"), [
    ("--dlm-tpf=inf", "'inf' is not a finite tokens-per-forward target >= 1"),
    ("--dlm-tpf=nan", "'nan' is not a finite tokens-per-forward target >= 1"),
    ("--dlm-threshold=2", "'2' is not a confidence threshold in (0, 1]"),
    ("--dlm-temperature=inf", "'inf' is not a finite temperature >= 0"),
    ("--dlm-max-time=inf", "'inf' is not a positive number of seconds"),
])
def test_out_of_range_numbers_are_usage_errors(pytester, option, message):
    pytester.makepyfile(test_points=POINTS)
    result = pytester.runpytest(*RUN, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR and message in result.stderr.str(), result.stderr.str()


def test_records_are_strict_json():
    labels = PointLabels(BenchPoint("mine", "m", 4, 8, 1), "user", "fp32", "cpu")
    record = PointMetrics.from_run(labels, describe={}, latencies_s=[1.0], nfe=8, forward_ms={},
                                   memory=MemoryReport(), warmup_rounds=0,
                                   extra={"ratio": math.inf, "spread": [1.0, math.nan]})
    info = record.to_extra_info()
    assert info["ratio"] is None and info["spread"] == [1.0, None]
    json.dumps(info, allow_nan=False)


def test_a_probe_dies_with_the_search_that_started_it(tmp_path):
    """kill -9 of a boundary search leaves no probe process behind (it would hold the GPU)."""
    pid_file = tmp_path / "probe.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    search = subprocess.Popen([sys.executable, "-c", "import sys; from pytest_dlmbench.probe import run_child; "
                               f"run_child([sys.executable, '-c', {child!r}])"])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    probe = int(pid_file.read_text())
    search.send_signal(signal.SIGKILL)
    search.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{probe}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = Path(f"/proc/{probe}").exists() and "Z" not in Path(f"/proc/{probe}/stat").read_text().split()[2]
    if alive:
        os.kill(probe, signal.SIGKILL)
    assert not alive


KILLED_CONTROLLER = POINTS + """

def test_the_controller_goes_away():
    import signal, time
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not os.path.exists("points.jsonl")
                                           or len(open("points.jsonl").readlines()) < 3):
        time.sleep(0.1)  # until the controller has journaled the header and both points
    os.kill(os.getppid(), signal.SIGKILL)  # a worker's parent: the pytest-xdist controller
"""


def test_under_xdist_a_killed_controller_leaves_a_valid_journal_and_no_saved_run(pytester):
    pytester.makepyfile(test_points=KILLED_CONTROLLER)
    done = subprocess.run([sys.executable, "-m", "pytest", *RUN, "-n", "2", "--dist=loadfile",
                           "--dlm-journal=points.jsonl", "--benchmark-save=run"],
                          cwd=pytester.path, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stdout
    run = load_run(pytester.path / "points.jsonl")
    assert {info["model"]: info["status"] for info in run.points.values()} == {"m-a": "ok", "m-b": "ok"}
    assert not list((pytester.path / ".benchmarks").rglob("*.json"))
