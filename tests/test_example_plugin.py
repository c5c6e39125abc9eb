"""The example plugin package (examples/dlmbench-example-plugin), installed as a user would install
it, runs beside the built-ins through its entry point alone; docs/write-a-plugin.md shows its
files as they are. A user's generate that logs its forwards gets every metric."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Inline pytester runs drop the modules they imported first; torch and Triton cannot be imported twice.
import pytest_dlmbench.runner  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401

REPO = Path(__file__).parent.parent
EXAMPLE = REPO / "examples" / "dlmbench-example-plugin"
GUIDE = REPO / "docs" / "write-a-plugin.md"
BENCHMARK = (REPO / "benchmarks" / "test_generation.py").read_text()
# A user's decoder: greedy without a cache, 8 tokens, each forward in the log it is handed
USER_DECODER = """
import torch

def greedy(model, prompt_ids, log):
    ids = prompt_ids
    for step in range(8):
        with log.forward("step", tokens=ids.shape[1], context=ids.shape[1], logits=1, attention="causal"):
            logits = model(ids, logits_to_keep=1).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt_ids.shape[1]:]
"""


def write_user_test(pytester: pytest.Pytester, fixture: str, body: str) -> None:
    """A module whose test_mine takes `fixture` and starts generate(prompt_ids, log) over a tiny-ar
    model and USER_DECODER's greedy; `body`, indented as inside it, goes on from there."""
    pytester.makepyfile(user_decoder=USER_DECODER)
    pytester.makepyfile(test_user=f"""
        import torch
        from pytest_dlmbench.core import BenchPoint
        from pytest_dlmbench.models import build_model, get_spec
        from user_decoder import greedy

        def test_mine({fixture}):
            model = build_model(get_spec("tiny-ar"), torch.device("cpu"), torch.float32)

            def generate(prompt_ids, log):""" + body)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed into a folder of its own (no index: everything is local)."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(EXAMPLE)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return target


def test_the_example_plugin_runs_beside_the_built_ins(pytester, installed, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(installed), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_generation=BENCHMARK)
    result = pytester.runpytest_subprocess(
        "--dlm-grid=smoke", "--dlm-models=tiny-dlm,smollm2-135m", "--dlm-strategies=baseline,dual_cache+factor",
        "--dlm-prompt=16", "--dlm-gen=32", "--dlm-batch=1", "--dlm-steps=8", "--dlm-rounds=1",
        "--benchmark-json=out.json", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    saved = json.loads((pytester.path / "out.json").read_text())
    records = {entry["name"].partition("[")[2].rstrip("]"): entry["extra_info"] for entry in saved["benchmarks"]}
    assert set(records) == {"dlm-tiny-dlm-p16-g32-b1", "dlm-tiny-dlm-p16-g32-b1-dual_cache+factor",
                            "ar-smollm2-135m-p16-g32-b1", "dlm-smollm2-135m-p16-g32-b1",
                            "dlm-smollm2-135m-p16-g32-b1-dual_cache+factor"}
    factor = records["dlm-smollm2-135m-p16-g32-b1-dual_cache+factor"]
    assert factor["acceptance"] == "factor" and factor["runtime"] == "graphs" and factor["status"] == "ok"
    assert factor["token_agreement"] is not None and factor["flops_per_forward"] is not None
    extensions = saved["machine_info"]["dlmbench"]["extensions"]
    assert {"module": "dlmbench_example", "entry_point": "example", "distribution": "dlmbench-example-plugin",
            "version": "0.1.0"} in extensions


def test_isolated_probes_load_the_extensions(pytester, installed, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(installed), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_oom_boundary=(REPO / "benchmarks" / "test_oom_boundary.py").read_text())
    result = pytester.runpytest_subprocess(
        "--dlm-boundary", "--dlm-models=tiny-dlm", "--dlm-strategies=dual_cache+factor",
        "--dlm-prompt=16", "--dlm-gen=32", "--dlm-max-batch=2", "--dlm-isolate=on", "--dlm-rounds=1",
        "--benchmark-json=out.json", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["isolated_probes"] is True and info["max_batch_size"] == 2 and info["acceptance"] == "factor"


def test_the_guide_shows_the_example_as_it_is():
    """Each code block of the guide headed by a file of the example is that file, whole."""
    blocks = dict(re.findall(r"`([\w./-]+)`:\n\n```\w*\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL))
    files = {"pyproject.toml", "dlmbench_example/__init__.py", "dlmbench_example/smollm2-135m.json"}
    assert files <= set(blocks)
    for name in files:
        assert blocks[name] == (EXAMPLE / name).read_text(), name


def test_the_factor_rule_commits_the_largest_n_it_allows(monkeypatch):
    import torch

    from pytest_dlmbench.models import MODEL_SPECS
    from pytest_dlmbench.paradigms.base import ADDED_STRATEGIES

    # importing the example registers its additions: in this process only for this test
    monkeypatch.setattr("pytest_dlmbench.models.MODEL_SPECS", dict(MODEL_SPECS))
    monkeypatch.setattr("pytest_dlmbench.paradigms.base.ADDED_STRATEGIES", dict(ADDED_STRATEGIES))
    monkeypatch.setattr("pytest_dlmbench.extensions._LOADED", {})
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delitem(sys.modules, "dlmbench_example", raising=False)
    from dlmbench_example import Factor

    inf = float("inf")
    # row 0: (n + 1)(1 - c_n) = 2 * 0.01, 3 * 0.2, 4 * 0.3 -> n = 2 passes f = 1, n = 3 does not
    # row 1: 2 * 0.6 = 1.2 fails at once -> the most confident alone
    confidence = torch.tensor([[0.7, 0.99, -inf, 0.8], [0.4, 0.1, 0.3, -inf]])
    chosen = Factor(1.0).select(confidence)
    assert chosen.tolist() == [[False, True, False, True], [True, False, False, False]]


def test_a_users_generate_that_logs_its_forwards_gets_every_metric(pytester):
    write_user_test(pytester, "dlm_bench", """
                return greedy(model, prompt_ids, log)

            metrics = dlm_bench(BenchPoint("mine", "tiny-ar", 5, 8, 2), generate=generate)
            assert metrics.runtime == "user" and metrics.weights == "user" and metrics.nfe == 8
    """)
    result = pytester.runpytest("--benchmark-json=out.json", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert info["runtime"] == "user" and info["tokens_per_forward"] == 1.0
    for key in ("ms_per_forward", "flops_per_forward", "bytes_per_forward", "achieved_tflops",
                "predicted_peak_bytes"):  # (measured_to_predicted needs a device allocator's peak)
        assert info[key] is not None and info[key] > 0, key
    assert info["ai_paper_flop_per_element"] is None  # a paper formula belongs to a built-in paradigm


def test_a_users_generate_gets_an_oom_boundary(pytester):
    write_user_test(pytester, "dlm_boundary", """
                if prompt_ids.shape[0] > 5:  # this decoder's memory ends at batch 5
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return greedy(model, prompt_ids, log)

            metrics = dlm_boundary(BenchPoint("mine", "tiny-ar", 5, 8, 1), generate=generate)
            assert metrics.status == "ok" and metrics.batch_size == 5 and metrics.runtime == "user"
    """)
    result = pytester.runpytest("--dlm-max-batch=8", "--dlm-rounds=1", "--benchmark-json=out.json",
                                "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    info = json.loads((pytester.path / "out.json").read_text())["benchmarks"][0]["extra_info"]
    assert (info["max_batch_size"], info["first_oom_batch"]) == (5, 6)
    assert info["boundary_probe_batches"] == [1, 2, 4, 5, 6, 8]  # doubling to 8, then bisection
    assert info["isolated_probes"] is False and info["runtime"] == "user"
    assert info["predicted_max_batch"] is not None and info["flops_per_forward"] is not None


def test_an_extension_that_fails_to_load_is_a_usage_error_naming_it(pytester, monkeypatch, tmp_path):
    site = tmp_path / "site"
    info = site / "broken_ext-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "broken_ext.py").write_text("raise ImportError('needs a library this machine lacks')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-ext\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[dlmbench]\nbroken = broken_ext\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    pytester.makepyfile(test_generation=BENCHMARK)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert ("dlmbench entry point 'broken' (broken_ext) of broken-ext failed to load: ImportError: needs a "
            "library this machine lacks") in result.stderr.str()
