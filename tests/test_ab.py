"""Interleaved A/B (`dlmbench ab`): the schedule, the paired decision and bad input. The whole
command on real runs (A/A quiet over 5 pairs, a 2x slower candidate failing with exit 1) is
results/ab-cpu/run.sh, run by tests/test_results_scripts.py."""

from __future__ import annotations

import subprocess

import pytest

from pytest_dlmbench.ab import ABError, schedule
from pytest_dlmbench.cli import main
from pytest_dlmbench.gate import GateRule, paired_compare


def test_schedules_alternate_or_follow_a_seeded_coin():
    assert schedule(3, "abba") == ["A", "B", "B", "A", "A", "B"]
    coin = schedule(6, "random", seed=3)
    assert coin == schedule(6, "random", seed=3) and all({*coin[i : i + 2]} == {"A", "B"} for i in (0, 2, 4, 6, 8, 10))
    with pytest.raises(ABError, match="order 'abab': must be one of abba, random"):
        schedule(2, "abab")


def test_the_paired_decision_sees_a_steady_10_percent_through_drift_that_hides_it_between_runs():
    drift = [100.0, 130.0, 80.0, 120.0, 95.0]  # the machine's speed moves 60 % between pairs
    base = [{"p": {"tokens_per_s": speed}} for speed in drift]
    slower = [{"p": {"tokens_per_s": speed * 0.9 * (1 + 0.005 * (-1) ** k)}} for k, speed in enumerate(drift)]
    same = [{"p": {"tokens_per_s": speed * (1 + 0.01 * (-1) ** k)}} for k, speed in enumerate(drift)]
    rules = [GateRule.parse("tokens_per_s:5%")]
    [caught] = paired_compare(base, slower, rules)
    assert caught.verdict == "regression" and caught.change.startswith("-9.9% over 5 pairs"), caught
    [quiet] = paired_compare(base, same, rules)
    assert quiet.verdict == "ok", quiet
    [alone] = paired_compare(base[:1], slower[:1], rules)
    assert alone.verdict == "inconclusive", alone  # one pair has no spread to test


def test_bad_sides_and_failing_invocations_are_clear_errors(tmp_path, capsys):
    assert main(["ab", "no-such-ref", str(tmp_path), "--repo", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"'no-such-ref' is neither a folder nor a git ref of {tmp_path}" in capsys.readouterr().err
    (tmp_path / "test_broken.py").write_text("import no_such_module\n")
    code = main(["ab", str(tmp_path), str(tmp_path), "--pairs", "1", "--out", str(tmp_path / "o"), "--",
                 "test_broken.py"])
    assert code == 2 and "pytest exited 2 without a usable run; see" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ab", "a", "b", "--pairs", "0"])
    assert "'0': must be a whole number >= 1" in capsys.readouterr().err


def test_a_bad_candidate_ref_leaves_no_worktree_of_the_base(tmp_path, capsys):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout
    git("init", "-q")
    git("-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-q", "--allow-empty", "-m", "base")
    assert main(["ab", "HEAD", "no-such-ref", "--repo", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "'no-such-ref' is neither a folder nor a git ref" in capsys.readouterr().err
    assert len(git("worktree", "list").splitlines()) == 1  # only the repository's own
