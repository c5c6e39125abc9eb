"""Analytic FLOP counts against torch's FlopCounterMode on tiny models, and the roofline arithmetic."""

from __future__ import annotations

import pytest

import transformers.models.llama.modeling_llama  # noqa: F401  (kept loaded across inline pytester runs)
import transformers.models.qwen2.modeling_qwen2  # noqa: F401
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import new_log, on, prompt, tiny
from pytest_dlmbench.paradigms import DecodeOptions, make_paradigm
from pytest_dlmbench.paradigms.base import ForwardShape
from pytest_dlmbench.roofline import Peaks, attended_pairs, forward_cost, roofline_fields, table_peaks

# The models use eager attention here, whose matmuls FlopCounterMode sees (it does not count the
# CPU SDPA kernel). Eager attention multiplies the full score matrix whatever the mask, so the
# comparison covers the forwards without a causal or block-causal pattern. Tolerance 0.5%.
TOLERANCE = 5e-3


def eager(name):
    from transformers import AutoModelForCausalLM

    from pytest_dlmbench.models import get_spec

    spec = get_spec(name)
    return spec, AutoModelForCausalLM.from_config(spec.config(), attn_implementation="eager").eval()


class Counting:
    """Stands in for a model and counts the FLOPs of each call with FlopCounterMode."""

    def __init__(self, model):
        self.model = model
        self.flops: list[int] = []

    def __call__(self, *args, **kwargs):
        with FlopCounterMode(display=False) as counter:
            out = self.model(*args, **kwargs)
        self.flops.append(counter.get_total_flops())
        return out

    def __getattr__(self, name):
        return getattr(self.model, name)


@pytest.mark.parametrize(("model_name", "strategy"), [
    ("tiny-dlm", "baseline"), ("tiny-dlm", "prefix_cache"), ("tiny-dlm", "dual_cache"),
    ("tiny-block", "baseline"), ("tiny-block", "parallel+subblock_cache"), ("tiny-ar", "baseline"),
])
def test_flops_match_torch_flop_counter(model_name, strategy):
    spec, model = eager(model_name)
    counting = Counting(model)
    log = new_log()
    with torch.inference_mode():
        make_paradigm(spec.paradigm, DecodeOptions(block_len=16, tpf=2.0), strategy).generate(
            on(counting), spec, prompt(spec, 2, 40), 32, log)
    assert len(counting.flops) == len(log.shapes)
    compared = 0
    for counted, shape in zip(counting.flops, log.shapes):
        if shape.attention != "full" and shape.tokens > 1:
            continue  # masked prefill: the counter charges the full score matrix
        assert forward_cost(spec, shape, 2, "fp32").flops == pytest.approx(counted, rel=TOLERANCE), shape
        compared += 1
    assert compared >= len(log.shapes) - 1


def test_attended_pairs():
    assert attended_pairs(ForwardShape("p", 4, 4, 1, "causal"), None) == 10
    assert attended_pairs(ForwardShape("d", 1, 9, 1, "causal"), None) == 9
    assert attended_pairs(ForwardShape("s", 3, 7, 1, "full"), None) == 21
    assert attended_pairs(ForwardShape("b", 6, 6, 1, "block_causal"), 2) == 2 + 2 + 4 + 4 + 6 + 6


def test_roofline_fields_against_hand_numbers():
    spec, _ = tiny("tiny-ar")
    shapes = (ForwardShape("decode", 1, 10, 1, "causal", 1),)
    cost = forward_cost(spec, shapes[0], 1, "bf16")
    peaks = Peaks(tflops=cost.flops / 1e12, gbps=cost.bytes / 1e9 / 2, source="user")  # memory takes 2 s
    fields = roofline_fields(spec, shapes, 1, 1, "bf16", latency_s=4.0, peaks=peaks)
    assert fields["bound"] == "memory" and fields["ridge_flops_per_byte"] == pytest.approx(2 * cost.flops / cost.bytes)
    assert fields["attainable_tokens_per_s"] == pytest.approx(0.5) and fields["roofline_fraction"] == pytest.approx(0.5)
    assert fields["achieved_tflops"] == pytest.approx(cost.flops / 4 / 1e12)


def test_peak_table_by_nvml_name():
    assert table_peaks("NVIDIA H100 80GB HBM3").gbps == 3350.0
    assert table_peaks("NVIDIA H100 PCIe").tflops == 756.0
    assert table_peaks("NVIDIA A100-SXM4-40GB").gbps == 1555.0
    assert table_peaks("NVIDIA GeForce RTX 4090") is not None and table_peaks("NVIDIA L40S") is not None
    assert table_peaks("NVIDIA Quadro P400") is None


def test_report_from_a_saved_smoke_run(pytester, tmp_path):
    import json

    from pytest_dlmbench.cli import main

    pytester.makepyfile(test_grid="def test_generation(dlm_bench, dlm_point):\n    dlm_bench(dlm_point)\n")
    result = pytester.runpytest("--dlm-rounds=1", "--dlm-gen=32", "--benchmark-json=run.json", "-p", "no:cacheprovider")
    assert result.ret == 0
    run = pytester.path / "run.json"
    info = json.loads(run.read_text())["benchmarks"][0]["extra_info"]
    assert info["flops_per_token"] > 0 and info["ai_paper_flop_per_element"] > 0 and info["achieved_tflops"] > 0
    assert main(["report", str(run), str(run), "--out", str(tmp_path / "report")]) == 0
    names = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert names == ["report.md", "roofline.png", "strategy_speedup.png", "throughput_vs_batch.png",
                     "throughput_vs_gen.png"]
    for png in (tmp_path / "report").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "1:run" in markdown and "2:run" in markdown and "dual_cache" in markdown and "![roofline]" in markdown
    assert all(f" {column} " in markdown for column in ("tok/J", "TTFT ms", "p99 ms"))


def test_measured_ceilings_are_positive_rates():
    from pytest_dlmbench.roofline import measure_peaks

    peaks = measure_peaks(torch.device("cpu"), matmul_size=128, copy_bytes=2**20, repeats=2)
    assert peaks.source == "measured" and peaks.tflops > 0 and peaks.gbps > 0 and peaks.ridge > 0


def test_the_paper_closed_form_is_given_for_uncached_forwards_only():
    from pytest_dlmbench.models import get_spec
    from pytest_dlmbench.paradigms import make_paradigm
    from pytest_dlmbench.paradigms.base import DecodeOptions

    spec = get_spec("llada-8b")
    values = {strategy: make_paradigm("dlm", DecodeOptions(tpf=3.0), strategy).paper_arithmetic_intensity(spec, 920, 256, 16)
              for strategy in ("baseline", "parallel", "prefix_cache", "dual_cache", "dual_cache+parallel")}
    assert values["baseline"] == values["parallel"] > 0  # same forward shapes, fewer of them
    assert values["prefix_cache"] is values["dual_cache"] is values["dual_cache+parallel"] is None
    block = get_spec("fast-dllm-v2-7b")
    assert make_paradigm("block", DecodeOptions(tpf=3.0), "parallel+subblock_cache").paper_arithmetic_intensity(
        block, 920, 256, 16) is None


def test_wall_time_table_sums_each_runtime_and_compares_shared_points_only():
    from pytest_dlmbench.report import wall_time_table

    def point(runtime: str, paradigm: str, wall: float, capture: float | None = None) -> dict:
        return {"run": "grid", "runtime": runtime, "paradigm": paradigm, "model": "m", "fidelity": "reference",
                "prompt_len": 40, "gen_len": 64, "batch_size": 1, "point_wall_s": wall, "capture_s": capture}

    table = wall_time_table([point("eager", "ar", 10.0), point("eager", "dlm", 30.0), point("graphs", "ar", 4.0, 1.5),
                             point("graphs", "block", 100.0, 2.0)])
    rows = {line.split("|")[2].strip(): [cell.strip() for cell in line.split("|")[3:7]]
            for line in table.splitlines()[2:]}
    assert rows["eager"] == ["2", "40", "0", "-"]
    assert rows["graphs"] == ["2", "104", "3.5", "0.4"]  # block has no eager twin: 4 s against ar's 10 s
    assert wall_time_table([{**point("eager", "ar", 1.0), "point_wall_s": None}]) is None


def _grid_point(runtime: str, strategy: str, gen: int, batch: int, tokens_per_s: float) -> dict:
    return {"run": "grid", "runtime": runtime, "paradigm": "dlm", "strategy": strategy, "model": "m",
            "fidelity": "reference", "prompt_len": 40, "gen_len": gen, "batch_size": batch,
            "tokens_per_s": tokens_per_s, "label": f"dlm+{strategy} [{runtime}]"}


def test_strategy_speedups_run_along_gen_length_when_the_strategies_ran_at_one_batch_size():
    from pytest_dlmbench.report import strategy_speedups

    points = [_grid_point(runtime, strategy, gen, 1, rate) for runtime, scale in (("eager", 1), ("graphs", 4))
              for gen in (64, 256) for strategy, rate in (("baseline", 10.0 * scale), ("parallel", gen / 8 * scale))]
    x_key, ratios = strategy_speedups(points, runs=1)
    assert x_key == "gen_len"
    assert ratios == {("dlm+parallel [eager]", 40): [(64, 0.8), (256, 3.2)],
                      ("dlm+parallel [graphs]", 40): [(64, 0.8), (256, 3.2)]}


def test_strategy_speedups_run_along_batch_size_with_each_gen_length_its_own_series():
    from pytest_dlmbench.report import strategy_speedups

    points = [_grid_point("graphs", strategy, gen, batch, rate) for gen in (64, 256) for batch in (1, 4)
              for strategy, rate in (("baseline", 10.0), ("parallel", 20.0 * batch))]
    x_key, ratios = strategy_speedups(points + [_grid_point("graphs", "parallel", 64, 16, 1.0)], runs=1)
    assert x_key == "batch_size"  # the batch-16 point has no baseline and is left out
    assert ratios == {("dlm+parallel [graphs] · gen 64", 40): [(1, 2.0), (4, 8.0)],
                      ("dlm+parallel [graphs] · gen 256", 40): [(1, 2.0), (4, 8.0)]}


def testseries_styles_give_a_runtime_pair_one_colour_and_two_line_styles():
    from pytest_dlmbench.report import series_styles

    styles = series_styles({"ar [eager]", "ar [graphs]", "dlm [eager]", "dlm [graphs]"})
    assert styles["ar [eager]"]["color"] == styles["ar [graphs]"]["color"] != styles["dlm [eager]"]["color"]
    assert styles["ar [eager]"]["linestyle"] == styles["dlm [eager]"]["linestyle"] != styles["ar [graphs]"]["linestyle"]
    many = series_styles({f"s{index}" for index in range(18)})
    assert len({style["color"] for style in many.values()}) == 18
