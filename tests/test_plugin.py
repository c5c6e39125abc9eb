"""Plugin behaviour through pytester: saved results, options, usage errors, user generate functions."""

from __future__ import annotations

import json
import subprocess
import sys
import weakref

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
import transformers.models.qwen2.modeling_qwen2  # noqa: F401

FIXED_KEYS = {
    "paradigm", "strategy", "model", "weights", "dtype", "device", "prompt_len", "gen_len", "batch_size",
    "block_size", "steps", "tokens_generated", "tokens_per_s", "latency_s", "nfe", "tokens_per_forward",
    "ms_per_forward", "prefill_ms", "peak_mem_allocated_bytes", "peak_mem_reserved_bytes", "nvml_peak_used_bytes",
    "status",
}

GRID_TEST = """
def test_generation(dlm_bench, dlm_point):
    dlm_bench(dlm_point)
"""

SMALL = ("--dlm-prompt=16", "--dlm-gen=32", "--dlm-batch=1", "--dlm-rounds=2", "--dlm-warmup=1", "--dlm-strategies=baseline",
         "-p", "no:cacheprovider")


def run_json(pytester: pytest.Pytester, *args: str) -> dict:
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest("--benchmark-json=out.json", *args)
    assert result.ret == 0, result.stdout.str()
    return json.loads((pytester.path / "out.json").read_text())


def test_saved_json_has_every_fixed_key_for_all_three_paradigms(pytester):
    data = run_json(pytester, *SMALL)
    names = [bench["name"] for bench in data["benchmarks"]]
    assert names == [
        "test_generation[ar-tiny-ar-p16-g32-b1]",
        "test_generation[dlm-tiny-dlm-p16-g32-b1]",
        "test_generation[block-tiny-block-p16-g32-b1]",
    ]
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        assert FIXED_KEYS <= set(info)
        assert info["status"] == "ok" and info["weights"] == "random" and info["device"] == "cpu"
        assert info["tokens_generated"] == 32
        assert info["tokens_per_s"] == pytest.approx(32 / info["latency_s"])
        assert info["rounds"] == bench["stats"]["rounds"] == 2
        assert bench["stats"]["median"] == pytest.approx(info["latency_s"], rel=0.05, abs=5e-3)
    assert data["machine_info"]["dlmbench"]["torch"]


def test_all_strategies_run_with_their_labels(pytester):
    data = run_json(pytester, *SMALL, "--dlm-strategies=all", "--dlm-rounds=1")
    infos = {bench["name"].split("[")[1].rstrip("]"): bench["extra_info"] for bench in data["benchmarks"]}
    assert list(infos) == [
        "ar-tiny-ar-p16-g32-b1",
        "dlm-tiny-dlm-p16-g32-b1",
        "dlm-tiny-dlm-p16-g32-b1-prefix_cache",
        "dlm-tiny-dlm-p16-g32-b1-dual_cache",
        "dlm-tiny-dlm-p16-g32-b1-parallel",
        "dlm-tiny-dlm-p16-g32-b1-dual_cache+parallel",
        "block-tiny-block-p16-g32-b1",
        "block-tiny-block-p16-g32-b1-parallel",
        "block-tiny-block-p16-g32-b1-parallel+subblock_cache",
    ]
    for name, info in infos.items():
        assert FIXED_KEYS <= set(info) and info["nfe"] > 0 and info["tokens_per_forward"] > 0
        assert (info["token_agreement"] is None) == (info["strategy"] == "baseline"), name
    parallel = infos["dlm-tiny-dlm-p16-g32-b1-parallel"]
    assert parallel["acceptance"] == "simulated" and parallel["tpf_target"] == 3.0 and parallel["tpf_dispersion"] == 1.0
    assert parallel["nfe"] < 32 and parallel["row_tokens_per_forward"] == parallel["tokens_per_forward"]  # batch 1
    assert infos["dlm-tiny-dlm-p16-g32-b1-dual_cache"]["acceptance"] == "fixed"
    assert infos["block-tiny-block-p16-g32-b1"]["acceptance"] == "fixed"
    assert 0 <= infos["dlm-tiny-dlm-p16-g32-b1-dual_cache"]["token_agreement"] <= 1


def test_terminal_summary_lists_every_point(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest(*SMALL)
    result.stdout.fnmatch_lines(["*= dlmbench =*", "paradigm*strategy*model*tok/s*ms/forward*NFE*TPF*peak MiB*",
                                 "ar*baseline*tiny-ar*16*32*1*", "dlm*tiny-dlm*", "block*tiny-block*"])


def test_the_time_budget_never_cuts_rounds_and_warns_with_their_cost(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest("--benchmark-json=out.json", *SMALL, "--dlm-rounds=5", "--dlm-max-time=0.000001",
                                "--dlm-paradigms=ar")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*RoundsWarning: ar-tiny-ar-p16-g32-b1: 5 timed rounds take about * s after a * s "
                                 "warm-up generation, over --dlm-max-time=1e-06 s; rounds are not cut*"])
    data = json.loads((pytester.path / "out.json").read_text())
    assert [b["extra_info"]["rounds"] for b in data["benchmarks"]] == [5]
    assert [b["stats"]["rounds"] for b in data["benchmarks"]] == [5]


def test_no_warmup_still_measures_memory_and_warns_that_timings_are_cold(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest("--benchmark-json=out.json", *SMALL, "--dlm-warmup=0", "--dlm-paradigms=dlm")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*--dlm-warmup=0: each point's timed rounds include its first generation*"])
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["warmup_rounds"] == 0 and info["peak_rss_bytes"] > 0


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--dlm-rounds=0", "'0' is not an integer >= 1"),
        ("--dlm-paradigms=ar,beam", "unknown paradigm 'beam'; allowed: all, ar, block, dlm"),
        ("--dlm-models=gpt-9", "unknown model 'gpt-9'"),
        ("--dlm-dtype=int8", "'int8' is not a dtype; allowed: auto, bf16, fp16, fp32"),
        ("--dlm-device=tpu", "'tpu' is not a device"),
        ("--dlm-gen=12,x", "'x' is not an integer >= 1"),
        ("--dlm-max-time=-3", "'-3' is not a positive number"),
        ("--dlm-grid=huge", "'huge' is not a grid; allowed: auto, smoke, standard, paper"),
        ("--dlm-checkpoint=tiny-ar", "'tiny-ar' is not NAME=PATH"),
        ("--dlm-checkpoint=tiny-ar=/no/such/dir", "'/no/such/dir' for tiny-ar is not a directory"),
        ("--dlm-prompts=wiki", "'wiki' is not a prompt source; allowed: synthetic, gsm8k"),
        ("--dlm-strategies=turbo", "unknown strategy 'turbo'; allowed: all, baseline, parallel"),
        ("--dlm-tpf=0.5", "'0.5' is not a finite tokens-per-forward target >= 1"),
        ("--dlm-tpf-dispersion=0.5", "'0.5' is not a dispersion: 0 (every row the mean) or a number >= 1"),
        ("--dlm-temperature=-1", "'-1' is not a finite temperature >= 0"),
        ("--dlm-fidelity=exact", "unknown fidelity 'exact'; allowed: all, reference, lean"),
        ("--dlm-acceptance-trace=none.json", "--dlm-acceptance-trace=none.json: no such file to replay"),
        ("--dlm-threshold=0", "'0' is not a confidence threshold in (0, 1]"),
        ("--dlm-max-rounds=2", "--dlm-max-rounds=2 is below --dlm-rounds=6; it must be at least that"),
        ("--dlm-gate=tokens_per_s=5", "'tokens_per_s=5' is not METRIC:THRESHOLD"),
    ],
)
def test_bad_option_values_are_usage_errors(pytester, option, message):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest(option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--dlm-gen=999",), "select no point of the smoke grid"),
        (("--dlm-block-len=48", "--dlm-paradigms=dlm"), "gen_len=32 must be a positive multiple of block_len=48"),
        (("--dlm-prompts=gsm8k", "--dlm-paradigms=ar"), "--dlm-prompts=gsm8k needs tiny-ar's tokenizer"),
        (("--dlm-strategies=dual_cache", "--dlm-paradigms=ar"), "select no point of the smoke grid"),
        (("--dlm-subblock-len=5", "--dlm-paradigms=block"), "subblock_len=5 must divide tiny-block's block size 32"),
    ],
)
def test_unrunnable_selections_are_usage_errors(pytester, options, message):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest(*options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_cuda_device_without_cuda_is_a_usage_error(pytester):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest("--dlm-device=cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--dlm-device=cuda: CUDA is not available" in result.stderr.str()


def test_models_option_runs_those_models_with_their_own_paradigm(pytester):
    data = run_json(pytester, *SMALL, "--dlm-models=tiny-block", "--dlm-rounds=1")
    assert [b["extra_info"]["paradigm"] for b in data["benchmarks"]] == ["block"]


def test_a_users_generate_function_is_timed(pytester):
    pytester.makepyfile(test_user="""
        import time
        import torch
        from pytest_dlmbench.core import BenchPoint

        def test_mine(dlm_bench):
            def generate(prompt_ids):
                time.sleep(0.02)
                return torch.zeros(prompt_ids.shape[0], 8, dtype=torch.long)
            metrics = dlm_bench(BenchPoint("mine", "my-model", 5, 8, 2), generate=generate, vocab_size=100)
            assert metrics.latency_s >= 0.02 and metrics.weights == "user" and metrics.nfe is None
    """)
    result = pytester.runpytest("--benchmark-json=out.json", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["tokens_per_s"] <= 16 / 0.02 and info["tokens_generated"] == 16


def test_model_cache_keeps_one_model_and_frees_the_previous():
    from pytest_dlmbench.loader import ModelCache
    from pytest_dlmbench.core import Settings

    cache = ModelCache(Settings(device="cpu", dtype="fp32"))
    first = cache.get("tiny-ar")
    assert cache.get("tiny-ar") is first
    gone = weakref.ref(first.model)
    del first
    second = cache.get("tiny-dlm")
    assert gone() is None, "the previous model is still alive"
    assert second.spec.name == "tiny-dlm"


def test_help_does_not_import_torch():
    code = "import sys, pytest_dlmbench.plugin, pytest_dlmbench.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run([sys.executable, "-m", "pytest", "--help"], capture_output=True, text=True, check=True)
    assert "--dlm-grid" in result.stdout and "--dlm-max-time" in result.stdout


def _parallel_agreement(pytester: pytest.Pytester, *args: str) -> float | None:
    data = run_json(pytester, "--dlm-paradigms=dlm", "--dlm-prompt=16", "--dlm-gen=32", "--dlm-batch=1",
                    "--dlm-rounds=1", "-p", "no:cacheprovider", *args)
    [agreement] = [b["extra_info"]["token_agreement"] for b in data["benchmarks"]
                   if b["extra_info"]["strategy"] == "parallel"]
    return agreement


def test_token_agreement_does_not_depend_on_test_order(pytester):
    in_order = _parallel_agreement(pytester, "--dlm-strategies=baseline,parallel")
    assert in_order is not None and 0 <= in_order <= 1
    pytester.makeconftest("""
def pytest_collection_modifyitems(items):
    items.reverse()  # every strategy before its baseline
""")
    assert _parallel_agreement(pytester, "--dlm-strategies=baseline,parallel") == in_order
    assert _parallel_agreement(pytester, "--dlm-strategies=parallel") is None  # no baseline in the session


def test_peak_options_give_roofline_fields_on_any_device(pytester):
    data = run_json(pytester, *SMALL, "--dlm-paradigms=ar", "--dlm-peak-tflops=2", "--dlm-peak-gbps=50")
    info = data["benchmarks"][0]["extra_info"]
    assert (info["peak_tflops"], info["peak_gbps"], info["peaks_source"]) == (2.0, 50.0, "user")
    assert info["bound"] in ("memory", "compute") and info["roofline_fraction"] > 0


def test_both_runtimes_run_each_point_and_the_second_saves_the_share_of_equal_tokens(pytester):
    data = run_json(pytester, *SMALL, "--dlm-runtime=all", "--dlm-strategies=all", "--dlm-paradigms=dlm,block")
    saved = {bench["fullname"].partition("[")[2].rstrip("]"): bench["extra_info"] for bench in data["benchmarks"]}
    graphs = {name: info for name, info in saved.items() if info["runtime"] == "graphs"}
    eager = {name: info for name, info in saved.items() if info["runtime"] == "eager"}
    assert sorted(eager) == sorted(f"{name}-eager" for name in graphs) and len(graphs) == 8
    assert all(info["runtime_agreement"] is None for info in graphs.values())  # measured first
    assert all(info["runtime_agreement"] == 1.0 for info in eager.values())  # the CPU gives equal tokens
    assert all(info["capture_s"] is None and info["point_wall_s"] > 0 for info in saved.values())


def test_an_unknown_runtime_is_a_usage_error(pytester):
    pytester.makepyfile(test_grid=GRID_TEST)
    result = pytester.runpytest("--dlm-runtime=jit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown runtime 'jit'; allowed: all, graphs, eager*"])


def test_both_fidelities_decode_the_same_tokens_and_the_lean_one_says_so_in_its_id(pytester):
    data = run_json(pytester, *SMALL, "--dlm-fidelity=all", "--dlm-runtime=all", "--dlm-strategies=all",
                    "--dlm-paradigms=dlm", "--dlm-prompt=16", "--dlm-gen=32")
    saved = {bench["fullname"].partition("[")[2].rstrip("]"): bench["extra_info"] for bench in data["benchmarks"]}
    assert "dlm-tiny-dlm-p16-g32-b1-dual_cache-eager-lean" in saved and "dlm-tiny-dlm-p16-g32-b1" in saved
    reference = {name: info for name, info in saved.items() if info["fidelity"] == "reference"}
    lean = {name: info for name, info in saved.items() if info["fidelity"] == "lean"}
    assert sorted(lean) == sorted(f"{name}-lean" for name in reference) and len(reference) == 10
    for name, info in reference.items():  # the runtimes agree within each fidelity
        assert info["runtime_agreement"] in (None, 1.0) and lean[f"{name}-lean"]["nfe"] == info["nfe"], name
        assert info["bytes_per_forward"] > lean[f"{name}-lean"]["bytes_per_forward"], name  # logits everywhere
    baseline = reference["dlm-tiny-dlm-p16-g32-b1"]
    assert baseline["predicted_peak_bytes"] > lean["dlm-tiny-dlm-p16-g32-b1-lean"]["predicted_peak_bytes"]


def test_a_checkpoint_run_writes_its_acceptance_and_a_random_run_replays_it(pytester, tmp_path):
    from safetensors.torch import save_file

    from helpers import tiny

    _, model = tiny("tiny-dlm", seed=3)
    (tmp_path / "ckpt").mkdir()
    save_file({key: value.contiguous() for key, value in model.state_dict().items()},
              str(tmp_path / "ckpt" / "model.safetensors"))
    trace = pytester.path / "trace.json"
    common = (*SMALL, "--dlm-paradigms=dlm", "--dlm-strategies=parallel", "--dlm-batch=1", f"--dlm-acceptance-trace={trace}")
    real = run_json(pytester, *common, f"--dlm-checkpoint=tiny-dlm={tmp_path / 'ckpt'}", "--dlm-threshold=0.004")
    written = json.loads(trace.read_text())
    assert written["schema"] == 1 and [entry["strategy"] for entry in written["points"]] == ["parallel"]
    replayed = run_json(pytester, *common)
    real_info, replay_info = (run["benchmarks"][0]["extra_info"] for run in (real, replayed))
    assert real_info["acceptance"] == "model" and replay_info["acceptance"] == "trace"
    assert replay_info["weights"] == "random" and replay_info["nfe"] == real_info["nfe"]
