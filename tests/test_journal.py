"""--dlm-journal: a run killed before pytest-benchmark saves keeps every point that ended, and the
journal reads like a saved run (gate, merge, and through merge, pytest-benchmark compare)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401

from pytest_dlmbench.cli import main
from pytest_dlmbench.store import FAILED_KEY, RunFileError, load_run

KILLED_RUN = """
import os, signal, time
import pytest
import torch
from pytest_dlmbench.core import BenchPoint

@pytest.mark.parametrize("batch", [1, 4, 2])
def test_point(dlm_bench, batch):
    def generate(prompt_ids):
        if prompt_ids.shape[0] == 4:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        time.sleep(0.01)
        return torch.zeros(prompt_ids.shape[0], 8, dtype=torch.long)
    dlm_bench(BenchPoint("mine", "m", 4, 8, batch), generate=generate, vocab_size=50)

def test_the_machine_goes_away():
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_keeps_its_journal(pytester):
    pytester.makepyfile(test_killed=KILLED_RUN)
    done = subprocess.run([sys.executable, "-m", "pytest", "--dlm-rounds=2", "--dlm-journal=points.jsonl",
                           "--benchmark-json=run.json", "-p", "no:cacheprovider", "-q"],
                          cwd=pytester.path, capture_output=True, text=True)
    assert done.returncode == -9, done.stdout
    saved = pytester.path / "run.json"  # pytest-benchmark 5.2 creates it empty at start-up, 5.3 not at all
    assert not saved.exists() or saved.read_bytes() == b""

    run = load_run(pytester.path / "points.jsonl")
    assert {test: info["status"] for test, info in run.points.items()} == {
        "test_killed.py::test_point[1]": "ok", "test_killed.py::test_point[4]": "oom",
        "test_killed.py::test_point[2]": "ok"}
    assert run.machine["device"] == "cpu" and run.points["test_killed.py::test_point[2]"]["rounds"] == 2

    assert main(["merge", str(pytester.path / "points.jsonl"), "--out", str(pytester.path / "kept.json")]) == 0
    kept = json.loads((pytester.path / "kept.json").read_text())
    assert [b["name"] for b in kept["benchmarks"]] == ["test_point[1]", "test_point[2]"]
    assert len(kept["benchmarks"][0]["stats"]["data"]) == 2 and len(kept[FAILED_KEY]) == 1
    listing = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", "kept.json"],
                             cwd=pytester.path, capture_output=True, text=True)
    assert listing.returncode == 0 and "test_point[2]" in listing.stdout, listing.stderr


def test_a_finished_run_journals_what_it_saves(pytester):
    pytester.makepyfile(test_killed=KILLED_RUN.replace("os.kill(os.getpid(), signal.SIGKILL)", "pass"))
    result = pytester.runpytest("--dlm-rounds=2", "--dlm-journal=points.jsonl", "--benchmark-json=run.json",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, skipped=1)
    saved, journaled = load_run(pytester.path / "run.json"), load_run(pytester.path / "points.jsonl")
    assert journaled.points == saved.points and journaled.machine == saved.machine


def test_an_existing_journal_is_never_overwritten(pytester):
    (pytester.path / "points.jsonl").write_text("another run's points\n")
    pytester.makepyfile(test_killed=KILLED_RUN)
    result = pytester.runpytest("--dlm-journal=points.jsonl", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--dlm-journal=points.jsonl: the file exists; remove it or name a new one" in result.stderr.str()
    assert (pytester.path / "points.jsonl").read_text() == "another run's points\n"
    missing = pytester.runpytest("--dlm-journal=nowhere/points.jsonl", "-p", "no:cacheprovider")
    assert "--dlm-journal=nowhere/points.jsonl: the folder nowhere does not exist" in missing.stderr.str()
    folder = pytester.runpytest("--dlm-journal=.", "-p", "no:cacheprovider")
    assert "--dlm-journal='.': needs the path of a new file, not a folder" in folder.stderr.str()


def test_a_line_cut_by_the_kill_is_dropped_and_a_corrupt_one_is_an_error(pytester):
    pytester.makepyfile(test_killed=KILLED_RUN.replace("os.kill(os.getpid(), signal.SIGKILL)", "pass"))
    pytester.runpytest("--dlm-rounds=1", "--dlm-journal=points.jsonl", "-p", "no:cacheprovider")
    lines = (pytester.path / "points.jsonl").read_text().splitlines()
    cut = pytester.path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    assert len(load_run(cut).points) == len(lines) - 2  # the header, and the cut point
    corrupt = pytester.path / "corrupt.jsonl"
    corrupt.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(RunFileError, match="corrupt.jsonl: not valid JSON"):
        load_run(corrupt)
