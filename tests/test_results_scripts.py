"""Every script under results/ runs: the ones that rebuild a table on their committed runs, the ones
that measure on tiny models on the CPU. A script that is not here must not be there either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "results"
TINY_CPU = "--dlm-device=cpu --dlm-models=tiny-qwen2 --dlm-prompt=40 --dlm-gen=64 --dlm-batch=1"
TESTED = {"lib.sh", "new-models/table.py", "new-models/standard.sh", "new-models/profile_kernels.py",
          "boundary-h100/validate_memory_model.py", "gate-fwer/simulate.py", "ab-cpu/run.sh",
          "ab-gpu/run.sh", "energy-h100/table.py"}


def run(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ | env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_every_script_under_results_is_run_here():
    scripts = {str(path.relative_to(RESULTS)) for path in RESULTS.rglob("*") if path.suffix in (".py", ".sh")}
    assert scripts == TESTED


def test_the_new_models_table_rebuilds_from_its_runs():
    done = run(sys.executable, "results/new-models/table.py")
    assert done.stdout.strip() in (RESULTS / "new-models" / "README.md").read_text()


def test_the_energy_table_rebuilds_from_its_run():
    done = run(sys.executable, "results/energy-h100/table.py")
    assert done.stdout.strip() in (RESULTS / "energy-h100" / "README.md").read_text()


def test_the_memory_model_check_reads_the_boundary_runs():
    done = run(sys.executable, "results/boundary-h100/validate_memory_model.py")
    assert "probe:" in done.stdout and "grid:" in done.stdout


def test_the_gate_simulation_runs_small():
    done = run(sys.executable, "results/gate-fwer/simulate.py", "--sessions", "20", "--points", "4")
    assert "sigma" in done.stdout.lower()


def test_the_kernel_profile_runs_on_the_cpu():
    done = run(sys.executable, "results/new-models/profile_kernels.py", "cpu", "tiny-qwen3,tiny-moe")
    assert "tiny-qwen3 graphs:" in done.stdout and "tiny-moe graphs: refused" in done.stdout
    assert "tiny-moe eager:" in done.stdout


@pytest.mark.parametrize("part", ["ar", "dlm"])
def test_the_standard_grid_script_measures_tiny_points_and_keeps_journals(tmp_path, part):
    run("bash", "results/new-models/standard.sh", part, OUT=str(tmp_path), DEADLINE_S="500", DLM_EXTRA_ARGS=TINY_CPU)
    walltimes = (tmp_path / "walltime.txt").read_text().splitlines()
    assert len(walltimes) == 2 and all(" rc=0 " in line for line in walltimes)
    for line in walltimes:
        name = line.split()[0]
        points = json.loads((tmp_path / f"{name}.json").read_text())["benchmarks"]
        assert {point["extra_info"]["model"] for point in points} == {"tiny-qwen2"}
        assert len((tmp_path / f"{name}.jsonl").read_text().splitlines()) == len(points) + 1  # header + points
    if part == "dlm":
        assert "exit 4" in (tmp_path / "moe-graphs-refused.log").read_text()


def test_interleaved_a_b_is_quiet_on_a_a_and_fails_a_2x_slower_candidate(tmp_path):
    """5 A/A pairs raise no alarm; 3 pairs of a candidate whose forwards take twice as long fail (exit 1).
    At 20 %: a 5 % gate's false alarms are 5 % of A/A runs by design, too many for a test."""
    run("bash", "results/ab-cpu/run.sh", OUT=str(tmp_path), PAIRS="5", SLOW_PAIRS="3", GATE="tokens_per_s:20%")
    assert (tmp_path / "exit-codes.txt").read_text().splitlines() == ["a-a exit 0", "2x-slower exit 1"]
    quiet, slower = (json.loads((tmp_path / name / "ab.json").read_text()) for name in ("a-a", "2x-slower"))
    assert [i["side"] for i in quiet["invocations"]] == ["A", "B", "B", "A"] * 2 + ["A", "B"]
    assert len(quiet["verdicts"]) == 2 and {v["verdict"] for v in quiet["verdicts"]} <= {"ok", "improved"}
    assert [v["verdict"] for v in slower["verdicts"]] == ["regression", "regression"]
    assert "**2 regression(s) under tokens_per_s:20%**" in (tmp_path / "2x-slower.md").read_text()


def test_the_deeper_candidate_does_more_work_in_every_forward(tmp_path):
    """One pair of the deeper experiment (the A/A is ab-cpu's mechanism), on a tiny model on the
    CPU: the candidate's model has 4 more layers (its forwards' analytic FLOPs say so) and one pair
    is too few for a verdict."""
    run("bash", "results/ab-gpu/run.sh", "tiny-ar", "benchmarks/test_generation.py", "--dlm-grid=smoke",
        "--dlm-models=tiny-ar", "--dlm-prompt=16", "--dlm-gen=32", "--dlm-batch=1", "--dlm-device=cpu",
        "--dlm-rounds=2", "-p", "no:cacheprovider", OUT=str(tmp_path), PAIRS="1", EXPERIMENTS="deeper")
    assert (tmp_path / "exit-codes.txt").read_text().splitlines() == ["deeper exit 0"]
    folder = tmp_path / "deeper"
    base, deeper = (json.loads((folder / name).read_text())["benchmarks"][0]["extra_info"]
                    for name in ("A1.json", "B1.json"))
    assert deeper["flops_per_forward"] > 2 * base["flops_per_forward"]  # 6 layers against 2
    assert [v["verdict"] for v in json.loads((folder / "ab.json").read_text())["verdicts"]] == ["inconclusive"]
