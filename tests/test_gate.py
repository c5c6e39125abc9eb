"""Regression gating: rules, noise-aware verdicts, strict baselines, safe saves, the CLI, and the
gate inside pytest with a genuinely slower run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
import transformers.models.qwen2.modeling_qwen2  # noqa: F401

from pytest_dlmbench.cli import main
from pytest_dlmbench.gate import GateError, GateRule, compare, noise, recommended_threshold
from pytest_dlmbench.store import (
    FAILED_KEY,
    RunFileError,
    SCHEMA_KEY,
    atomic_write_text,
    exclusive_write_text,
    load_run,
    machine_mismatch,
)


def point(latencies, tokens=100, status="ok", **extra):
    median = sorted(latencies)[len(latencies) // 2]
    return {"round_latencies_s": latencies, "tokens_generated": tokens, "latency_s": median,
            "tokens_per_s": tokens / median, "status": status, **extra}


TPS = [GateRule.parse("tokens_per_s:5%")]


def test_rule_parsing():
    assert GateRule.parse("tokens_per_s:5%") == GateRule("tokens_per_s", 5.0, True, +1)
    assert GateRule.parse("latency_s:0.2") == GateRule("latency_s", 0.2, False, -1)
    assert GateRule.parse("my_score:3%:higher").direction == +1
    with pytest.raises(GateError, match="has no known direction; add :higher or :lower"):
        GateRule.parse("my_score:3%")
    with pytest.raises(GateError, match="is not METRIC:THRESHOLD"):
        GateRule.parse("tokens_per_s=5")


def test_significant_slowdown_is_a_regression_and_noise_is_not():
    base = {"p": point([1.00, 1.01, 0.99, 1.00, 1.02])}
    slower = {"p": point([1.20, 1.21, 1.19, 1.22, 1.20])}
    same = {"p": point([1.01, 0.99, 1.00, 1.02, 1.00])}
    [verdict] = compare(base, slower, TPS)
    assert verdict.verdict == "regression" and verdict.fails and "p=" in verdict.change
    assert compare(base, same, TPS)[0].verdict == "ok"
    assert compare(slower, base, TPS)[0].verdict == "improved"


def test_overlapping_samples_beyond_the_threshold_are_not_a_regression():
    base = {"p": point([1.0, 1.5, 0.9, 1.4, 1.0])}
    new = {"p": point([1.1, 1.45, 1.0, 1.5, 1.2])}
    assert compare(base, new, TPS)[0].verdict == "ok"


def test_too_few_rounds_is_inconclusive_not_a_pass():
    verdict = compare({"p": point([1.0, 1.0, 1.0])}, {"p": point([2.0, 2.0, 2.0])}, TPS)[0]
    assert verdict.verdict == "inconclusive" and not verdict.fails


def test_memory_and_boundary_are_judged_on_the_threshold():
    rules = [GateRule.parse("peak_mem_allocated_bytes:2%"), GateRule.parse("max_batch_size:0")]
    base = {"p": point([1.0], peak_mem_allocated_bytes=1000, max_batch_size=16)}
    new = {"p": point([1.0], peak_mem_allocated_bytes=1100, max_batch_size=8)}
    assert [v.verdict for v in compare(base, new, rules)] == ["regression", "regression"]


def test_new_missing_and_status_changes_are_listed():
    base = {"a": point([1.0]), "b": point([1.0]), "c": point([1.0])}
    new = {"b": point([1.0], status="oom"), "c": point([1.0]), "d": point([1.0])}
    verdicts = {v.point: v.verdict for v in compare(base, new, TPS)}
    assert verdicts == {"a": "missing", "b": "regression", "c": "ok", "d": "new"}


def test_an_untimed_boundary_is_judged_on_its_numbers_not_its_status():
    rule = [GateRule.parse("max_batch_size:0")]
    timed = {"p": point([1.0], max_batch_size=16)}
    untimed = {"p": {"status": "untimed", "max_batch_size": 32}}
    shrunk = {"p": {"status": "untimed", "max_batch_size": 8}}
    assert [v.verdict for v in compare(timed, untimed, rule)] == ["improved"]
    assert [v.verdict for v in compare(untimed, shrunk, rule)] == ["regression"]
    assert [v.verdict for v in compare(untimed, {"p": {"status": "oom"}}, rule)] == ["regression"]


def test_noise_and_recommended_threshold():
    first = {"p": point([1.0, 1.0]), "q": point([2.0, 2.0])}
    second = {"p": point([1.02, 1.0]), "q": point([2.0, 2.0])}
    spreads = noise(first, second)
    assert [round(s.change_pct, 2) for s in spreads] == [pytest.approx(-1.96, abs=0.01), 0.0]
    assert recommended_threshold(spreads) == 3.0


def write_run(path: Path, points: dict, machine: dict | None = None, schema=1) -> Path:
    data = {"machine_info": {"dlmbench": machine or {"gpu_name": None, "torch": "2.13"}}, SCHEMA_KEY: schema,
            "benchmarks": [{"fullname": name, "extra_info": info, "stats": {}} for name, info in points.items()]}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the file is empty"),
        ('{"benchmarks": [{"fullname": "x", "extra', "not valid JSON, truncated or corrupt"),
        ('{"machine_info": {}}', "no 'benchmarks' list"),
        ('{"benchmarks": []}', "not written by pytest-dlmbench"),
        (json.dumps({"benchmarks": [{"name": "x"}], SCHEMA_KEY: 1}), "benchmark #0 lacks 'fullname' or 'extra_info'"),
        (json.dumps({"benchmarks": [], SCHEMA_KEY: 99}), "written with schema 99, newer than"),
    ],
)
def test_unusable_baselines_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "base.json"
    path.write_text(content)
    with pytest.raises(RunFileError, match=message) as error:
        load_run(path)
    assert str(path) in str(error.value)
    assert main(["compare", str(path), str(path)]) == 2


def test_compressed_runs_compare_like_plain_ones_and_a_damaged_one_is_a_clear_error(tmp_path):
    import gzip
    import lzma

    base = write_run(tmp_path / "base.json", {"t[p]": point([1.0, 1.01, 0.99, 1.0, 1.0])})
    slow = write_run(tmp_path / "slow.json", {"t[p]": point([1.3, 1.31, 1.29, 1.3, 1.3])})
    (tmp_path / "base.json.xz").write_bytes(lzma.compress(base.read_bytes()))
    (tmp_path / "slow.json.gz").write_bytes(gzip.compress(slow.read_bytes()))
    assert main(["compare", str(tmp_path / "base.json.xz"), str(tmp_path / "slow.json.gz")]) == 1
    assert main(["compare", str(tmp_path / "base.json.xz"), str(base)]) == 0
    damaged = tmp_path / "damaged.json.xz"
    damaged.write_bytes(lzma.compress(base.read_bytes())[:40])
    with pytest.raises(RunFileError, match=f"{damaged}: cannot be decompressed"):
        load_run(damaged)


def test_compare_writes_its_verdict_as_markdown_and_json_and_to_a_github_job_summary(tmp_path, capsys, monkeypatch):
    base = write_run(tmp_path / "base.json", {"t[p]": point([1.0, 1.01, 0.99, 1.0, 1.0])})
    slow = write_run(tmp_path / "slow.json", {"t[p]": point([1.3, 1.31, 1.29, 1.3, 1.3])})
    job_summary = tmp_path / "summary.md"
    job_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(job_summary))
    assert main(["compare", str(base), str(slow), "--format", "md"]) == 1
    markdown = capsys.readouterr().out
    assert "| point " in markdown and "| t[p] " in markdown and "regression |" in markdown
    assert "**1 regression(s) under tokens_per_s:5%**" in markdown
    assert main(["compare", str(base), str(base), "--format", "json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["regressions"], verdict["compared_points"], verdict["exit_code"]) == (0, 1, 0)
    assert verdict["verdicts"][0]["point"] == "t[p]" and verdict["verdicts"][0]["verdict"] == "ok"
    assert main(["compare", str(base), str(slow), "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out)["verdicts"][0]["verdict"] == "regression"
    summary = job_summary.read_text()  # appended by every compare, whatever its format
    assert summary.startswith("earlier step\n") and summary.count("## dlmbench compare") == 3
    assert summary.count("**1 regression(s)") == 2 and summary.count("**0 regression(s)") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(base), str(slow), "--format", "html"])
    assert exit_info.value.code == 2 and "invalid choice: 'html'" in capsys.readouterr().err


def test_cli_compare_and_noise(tmp_path, capsys):
    base = write_run(tmp_path / "base.json", {"t[p]": point([1.0, 1.01, 0.99, 1.0, 1.0])})
    slow = write_run(tmp_path / "slow.json", {"t[p]": point([1.3, 1.31, 1.29, 1.3, 1.3])})
    assert main(["compare", str(base), str(base)]) == 0
    assert main(["compare", str(base), str(slow)]) == 1
    out = capsys.readouterr().out
    assert "regression" in out and "t[p]" in out and "1 regression(s) under tokens_per_s:5%" in out
    assert main(["compare", str(base), str(slow), "--gate", "tokens_per_s:50%"]) == 0
    assert main(["noise", str(base), str(slow)]) == 0
    assert "recommended threshold: tokens_per_s:" in capsys.readouterr().out


def test_cli_refuses_a_machine_mismatch(tmp_path, capsys):
    base = write_run(tmp_path / "a.json", {"t[p1]": point([1.0])}, {"gpu_name": "NVIDIA H100 80GB HBM3", "torch": "2.11"})
    other = write_run(tmp_path / "b.json", {"t[p1]": point([1.0])}, {"gpu_name": "NVIDIA A100-SXM4-80GB", "torch": "2.11"})
    assert main(["compare", str(base), str(other)]) == 2
    assert "gpu_name: 'NVIDIA H100 80GB HBM3' != 'NVIDIA A100-SXM4-80GB'" in capsys.readouterr().err
    assert main(["compare", str(base), str(other), "--allow-mismatch"]) == 0
    assert machine_mismatch({"torch": "1"}, {"torch": "1"}) == []
    assert machine_mismatch({"pytorch_cuda_alloc_conf": None}, {"pytorch_cuda_alloc_conf": "expandable_segments:True"}) \
        == ["pytorch_cuda_alloc_conf: None != 'expandable_segments:True'"]


def test_cli_merge_joins_invocations_and_refuses_duplicates_and_mismatches(tmp_path, capsys):
    first = write_run(tmp_path / "a.json", {"t[p1]": point([1.0]), "t[p2]": point([2.0])})
    second = write_run(tmp_path / "b.json", {"t[p3]": point([3.0])})
    data = json.loads(second.read_text())
    data[FAILED_KEY] = [{"fullname": "t[p4]", "extra_info": {"status": "oom"}}]
    second.write_text(json.dumps(data))
    merged = tmp_path / "merged.json"
    assert main(["merge", str(first), str(second), "--out", str(merged)]) == 0
    run = load_run(merged)
    assert list(run.points) == ["t[p1]", "t[p2]", "t[p3]", "t[p4]"] and run.points["t[p4]"]["status"] == "oom"
    assert "3 finished and 1 failed points from 2 files" in capsys.readouterr().out

    again = write_run(tmp_path / "c.json", {"t[p2]": point([4.0])})
    assert main(["merge", str(first), str(again), "--out", str(merged)]) == 2
    assert f"{again}: t[p2] is also in {first} (--replace keeps the later file's)" in capsys.readouterr().err
    assert len(load_run(merged).points) == 4  # the refused merge left the earlier file as it was
    assert main(["merge", str(first), str(again), "--out", str(merged), "--replace"]) == 0
    assert f"replaced t[p2]: {first} replaced by {again}" in capsys.readouterr().out
    assert load_run(merged).points["t[p2]"]["latency_s"] == 4.0

    other = write_run(tmp_path / "d.json", {"t[p5]": point([1.0])}, {"gpu_name": "NVIDIA A100-SXM4-80GB", "torch": "2.13"})
    assert main(["merge", str(first), str(other), "--out", str(tmp_path / "x.json")]) == 2
    assert "machine or software differs" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "file").write_text("")
    assert main(["merge", str(first), "--out", str(tmp_path / "file" / "m.json")]) == 2
    assert f"{tmp_path / 'file' / 'm.json'}: cannot be written" in capsys.readouterr().err


def test_atomic_writes_leave_old_content_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")

    def killed(fd: int) -> None:  # the new content is half on disk when the run dies
        raise KeyboardInterrupt

    monkeypatch.setattr("os.fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new" * 1000)
    with pytest.raises(KeyboardInterrupt):
        exclusive_write_text(tmp_path, lambda n: "0002_x.json", "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_exclusive_writes_never_overwrite_or_share_a_number(tmp_path):
    first = exclusive_write_text(tmp_path, lambda n: f"{n + 1:04}_x.json", "a")
    second = exclusive_write_text(tmp_path, lambda n: f"{n + 1:04}_x.json", "b")
    assert (first.name, second.name) == ("0001_x.json", "0002_x.json")
    assert first.read_text() == "a" and second.read_text() == "b"
    number = lambda name: name[:4]  # noqa: E731
    third = exclusive_write_text(tmp_path, lambda n: f"{n + 1:04}_y.json", "c", claim_key=number)
    fourth = exclusive_write_text(tmp_path, lambda n: f"{n + 1:04}_z.json", "d", claim_key=number)
    assert (third.name, fourth.name) == ("0001_y.json", "0002_z.json")


USER_BENCH = """
import os, time
import torch
from pytest_dlmbench.core import BenchPoint

def test_mine(dlm_bench):
    delay = float(os.environ.get("EXTRA_DELAY", "0"))
    def generate(prompt_ids):
        time.sleep(0.02 + delay)
        return torch.zeros(prompt_ids.shape[0], 8, dtype=torch.long)
    dlm_bench(BenchPoint("mine", "my-model", 4, 8, 1), generate=generate, vocab_size=50)
"""
RUN = ("--dlm-rounds=6", "--dlm-warmup=1", "-p", "no:cacheprovider")


def test_pytest_gate_passes_an_aa_pair_and_fails_a_slower_run(pytester, monkeypatch):
    pytester.makepyfile(test_user=USER_BENCH)
    assert pytester.runpytest(*RUN, "--benchmark-save=base").ret == 0
    saved = sorted((pytester.path / ".benchmarks").rglob("*.json"))
    assert [p.name for p in saved] == ["0001_base.json"]
    assert json.loads(saved[0].read_text())[SCHEMA_KEY] == 1

    same = pytester.runpytest(*RUN, "--benchmark-compare", "--dlm-gate=tokens_per_s:5%")
    assert same.ret == 0, same.stdout.str()
    same.stdout.fnmatch_lines(["*dlmbench gate*", "*test_mine*tokens_per_s*", "0 regression(s) against*"])

    monkeypatch.setenv("EXTRA_DELAY", "0.01")
    slower = pytester.runpytest(*RUN, f"--dlm-baseline={saved[0]}")
    assert slower.ret == pytest.ExitCode.TESTS_FAILED
    slower.stdout.fnmatch_lines(["*point*metric*baseline*current*change*verdict*",
                                 "*test_mine*tokens_per_s*regression*", "1 regression(s) against*"])


def test_pytest_gate_refuses_bad_baselines_before_running(pytester, tmp_path):
    pytester.makepyfile(test_user=USER_BENCH)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"benchmarks": [')
    result = pytester.runpytest(f"--dlm-baseline={corrupt}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"gate baseline: {corrupt}: not valid JSON" in result.stderr.str()

    result = pytester.runpytest("--dlm-gate=tokens_per_s:5%", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--dlm-gate needs a baseline" in result.stderr.str()

    other = write_run(tmp_path / "other.json", {}, {"gpu_name": "NVIDIA H200", "gpu_count": 1, "device": "cuda"})
    result = pytester.runpytest(f"--dlm-baseline={other}", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "gpu_name: 'NVIDIA H200' != None" in result.stderr.str()


def test_benchmark_saves_go_through_the_exclusive_writer():
    from pytest_dlmbench.integrations.pytest_benchmark import file_save_replaced

    assert file_save_replaced()


def test_concurrent_saves_never_collide(pytester):
    pytester.makepyfile(test_user=USER_BENCH)
    args = [sys.executable, "-m", "pytest", "--dlm-rounds=1", "-p", "no:cacheprovider", "-q"]
    runs = [subprocess.Popen([*args, f"--benchmark-save=run{i}"], cwd=pytester.path, stdout=subprocess.DEVNULL)
            for i in range(4)]
    assert [run.wait() for run in runs] == [0, 0, 0, 0]
    saved = sorted(p.name for p in (pytester.path / ".benchmarks").rglob("*.json"))
    assert [name[:4] for name in saved] == ["0001", "0002", "0003", "0004"]
    for path in (pytester.path / ".benchmarks").rglob("*.json"):
        load_run(path)
    listing = subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", *map(str, (pytester.path / ".benchmarks").rglob("*.json"))],
                             cwd=pytester.path, capture_output=True, text=True)
    assert listing.returncode == 0 and "test_mine" in listing.stdout, listing.stderr


GRID_TEST = """
def test_generation(dlm_bench, dlm_point):
    dlm_bench(dlm_point)
"""
AR_SMOKE = ("--dlm-paradigms=ar", "-p", "no:cacheprovider")  # six points, default rounds and warm-up


def test_default_gate_fails_every_point_of_a_2x_slower_run_and_compare_agrees(pytester, monkeypatch, capsys):
    pytester.makepyfile(test_grid=GRID_TEST)
    pytester.syspathinsert(Path(__file__).parent)  # the slowdown plugin
    monkeypatch.setenv("DLMBENCH_FORWARD_FLOOR_MS", "5")  # both runs: this CPU's drift moves a small part
    assert pytester.runpytest(*AR_SMOKE, "-p", "slowdown_plugin", "--benchmark-json=base.json").ret == 0
    monkeypatch.setenv("DLMBENCH_SLOWDOWN", "1.0")  # every forward takes twice as long
    gates = ("--dlm-gate=tokens_per_s:5%", "--dlm-gate=achieved_tflops:5%", "--dlm-gate=flops_per_token:1%")
    slow = pytester.runpytest(*AR_SMOKE, "-p", "slowdown_plugin", "--benchmark-json=slow.json",
                              "--dlm-baseline=base.json", *gates)
    assert slow.ret == pytest.ExitCode.TESTS_FAILED, slow.stdout.str()
    ids = list(load_run(pytester.path / "base.json").points)
    assert len(ids) == 6
    for test_id in ids:
        slow.stdout.fnmatch_lines([f"{test_id}*tokens_per_s*regression", f"{test_id}*achieved_tflops*regression",
                                   f"{test_id}*flops_per_token*+0.0%*ok"])
    slow.stdout.fnmatch_lines(["12 regression(s) against base.json"])

    capsys.readouterr()
    rules = [rule for gate in gates for rule in ("--gate", gate.partition("=")[2])]
    assert main(["compare", str(pytester.path / "base.json"), str(pytester.path / "slow.json"), *rules]) == 1
    table = capsys.readouterr().out.partition("\n\n")[0]
    assert table in slow.stdout.str()  # the same verdicts, row for row, from the saved files


def test_a_gate_on_a_key_no_point_has_is_a_usage_error(pytester, capsys):
    pytester.makepyfile(test_grid=GRID_TEST)
    small = (*AR_SMOKE, "--dlm-prompt=16", "--dlm-gen=32", "--dlm-batch=1", "--dlm-rounds=1")
    assert pytester.runpytest(*small, "--benchmark-json=base.json").ret == 0
    result = pytester.runpytest(*small, "--dlm-baseline=base.json", "--dlm-gate=flops_per_tokn:1%:lower")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gate rule flops_per_tokn:1%: no point of the baseline has a numeric "
                                 "'flops_per_tokn'; gateable keys: *flops_per_token*tokens_per_s*(in base.json)"])
    base = str(pytester.path / "base.json")
    assert main(["compare", base, base, "--gate", "flops_per_tokn:1%:lower"]) == 2
    assert "gateable keys:" in capsys.readouterr().err


def test_gated_points_get_the_rounds_their_baseline_needs(pytester):
    pytester.makepyfile(test_user=USER_BENCH)
    assert pytester.runpytest("--dlm-rounds=3", "-p", "no:cacheprovider", "--benchmark-json=base.json").ret == 0
    result = pytester.runpytest("--dlm-rounds=3", "-p", "no:cacheprovider", "--dlm-baseline=base.json",
                                "--benchmark-json=new.json")
    assert result.ret == 0, result.stdout.str()
    # 1 point gated at 0.05: against 3 baseline rounds a new run needs 4 (1 / C(7, 3) = 0.029 < 0.05)
    [info] = load_run(pytester.path / "new.json").points.values()
    assert info["rounds"] == len(info["round_latencies_s"]) == 4
    capped = pytester.runpytest("--dlm-rounds=3", "--dlm-max-rounds=3", "-p", "no:cacheprovider",
                                "--dlm-baseline=base.json")
    capped.stdout.fnmatch_lines(["*1 gated point(s) (test_user.py::test_mine) have too few baseline rounds for the "
                                 "gate to reach its level 0.05 (1 comparisons) even with --dlm-max-rounds=3*"])


def test_rounds_needed_and_the_corrected_levels():
    from pytest_dlmbench.gate import holm, rounds_needed
    from pytest_dlmbench.core import DEFAULT_ROUNDS

    # 6 a side is the fewest that can judge 30 points at once (5 a side cannot); 4 a side for one point
    assert DEFAULT_ROUNDS == 6 and rounds_needed(6, 30, 6) is not None and rounds_needed(5, 30, 5) is None
    assert rounds_needed(4, 1, 4) is not None and rounds_needed(3, 1, 3) is None
    assert rounds_needed(6, 30, 20) == 6 and rounds_needed(3, 2, 20) == 5 and rounds_needed(1, 30, 20) is None
    # Holm: the smallest p is tested at alpha / 3, the next at alpha / 2 only if the first was rejected
    base = {name: point([1.0 + i / 100 for i in range(8)]) for name in "abc"}
    unchanged = point([1.0 + i / 100 for i in range(8)])
    slower = point([1.0, 1.03, 1.08, 1.09, 1.1, 1.11, 1.12, 1.13])  # -5.5 %, p = 0.023
    verdicts = {v.point: v for v in compare(base, {"a": point([2.0 + i / 100 for i in range(8)]), "b": slower,
                                                   "c": unchanged}, TPS)}
    assert verdicts["a"].verdict == "regression" and "level 0.017" in verdicts["a"].change
    assert verdicts["b"].verdict == "regression" and "p=0.023, level 0.025" in verdicts["b"].change
    assert verdicts["c"].verdict == "ok"
    alone = {v.point: v for v in compare(base, {"a": unchanged, "b": slower, "c": unchanged}, TPS)}
    assert alone["b"].verdict == "ok" and "p=0.023, level 0.017" in alone["b"].change
    assert holm([]) == []
