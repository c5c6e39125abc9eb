"""`dlmbench history`: a point's metric over saved runs, and the commit where it changed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pytest_dlmbench.cli import main
from pytest_dlmbench.history import change_points
from pytest_dlmbench.store import SCHEMA_KEY

POINT = "benchmarks/test_generation.py::test_generation[ar-llama-8b-p40-g256-b1]"


def save(folder: Path, index: int, commit: str, tokens_per_s: float) -> None:
    """A run as pytest-benchmark saves it: its time, its commit, its points."""
    data = {"machine_info": {"dlmbench": {"gpu_name": "H200"}}, SCHEMA_KEY: 1,
            "datetime": f"2026-11-{index + 1:02d}T12:00:00", "commit_info": {"id": commit, "dirty": False},
            "benchmarks": [{"fullname": POINT, "extra_info": {"tokens_per_s": tokens_per_s, "status": "ok"},
                            "stats": {}}]}
    (folder / f"{index + 1:04d}_run.json").write_text(json.dumps(data))


def synthetic_history(folder: Path, regression_at: int | None, runs: int = 12, seed: int = 1) -> list[str]:
    """`runs` saves of one point at about 100 tok/s (2 % noise), 20 % slower from `regression_at` on."""
    noise = random.Random(seed)
    commits = [f"{index:02d}{'c0ffee' * 6}"[:40] for index in range(runs)]
    for index, commit in enumerate(commits):
        slower = regression_at is not None and index >= regression_at
        save(folder, index, commit, (80.0 if slower else 100.0) * (1 + noise.gauss(0, 0.02)))
    return commits


def test_history_finds_the_commit_of_an_injected_regression(tmp_path, capsys):
    commits = synthetic_history(tmp_path, regression_at=7)
    assert main(["history", str(tmp_path), "--point", POINT, "--plot", str(tmp_path / "history.png"),
                 "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    [change] = document["change_points"]
    assert change["commit"] == commits[7] and -25 < change["change_pct"] < -15
    assert [run["commit"] for run in document["runs"]] == commits  # oldest first
    assert (tmp_path / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["history", str(tmp_path), "--point", POINT]) == 0
    table = capsys.readouterr().out
    assert f"change point at commit {commits[7]}: -" in table and table.count("change point:") == 1


def test_a_steady_history_has_no_change_point(tmp_path, capsys):
    synthetic_history(tmp_path, regression_at=None)
    assert main(["history", str(tmp_path), "--point", POINT, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["change_points"] == []


def test_two_steps_are_both_found_and_a_threshold_above_them_finds_none():
    noise = random.Random(2)
    values = [level * (1 + noise.gauss(0, 0.01)) for level in [100.0] * 6 + [85.0] * 6 + [70.0] * 6]
    assert [change.index for change in change_points(values, 5.0)] == [6, 12]
    assert change_points(values, 40.0) == []  # no split moves the median by 40 %


def test_an_unknown_point_or_empty_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["history", str(tmp_path), "--point", POINT]) == 2
    assert "no run files in" in capsys.readouterr().err
    synthetic_history(tmp_path, regression_at=None, runs=3)
    assert main(["history", str(tmp_path), "--point", "test_x"]) == 2
    assert f"no run has point 'test_x'; points: {POINT}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["history", str(tmp_path), "--point", POINT, "--threshold", "five"])
    assert "'five': must be a percentage >= 0" in capsys.readouterr().err
