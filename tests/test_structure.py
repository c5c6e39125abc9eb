"""The package's shape: layered imports (no cycle, no arrow upward), one options table that
fills every Settings field and reaches probe processes whole, and a smoke run's record that
matches a committed one key for key and in every deterministic value."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

# Inline pytester runs drop modules first imported during the run; torch cannot be imported twice.
import torch  # noqa: F401
import transformers.models.llama.modeling_llama  # noqa: F401
import transformers.models.qwen2.modeling_qwen2  # noqa: F401

from pytest_dlmbench.core import DecodeOptions, Settings
from pytest_dlmbench.options import OPTIONS

PACKAGE = Path(__file__).parent.parent / "pytest_dlmbench"
# A module imports only from layers below its own (type-only imports included).
LAYERS = (
    {"pytest_dlmbench", "core", "integrations", "integrations.pytest_benchmark", "integrations.xdist",
     "integrations.transformers"},
    {"device", "models", "gate", "journal", "prompts", "runtimes.base", "trace", "extensions"},
    {"runtimes.fused", "runtimes.decode_attention"},
    {"timing", "memory", "energy", "memory_model", "store", "loader", "machine", "runtimes.eager", "runtimes.graphs",
     "paradigms.scoring"},
    {"runtimes", "paradigms.acceptance"},
    {"paradigms.base", "report"},
    {"paradigms.ar", "paradigms.block", "paradigms.dlm"},
    {"paradigms", "roofline"},
    {"record", "session", "record_keys"},
    {"grid", "runner", "probe", "api"},
    {"options", "boundary", "workers", "scheduling", "ab", "history"},
    {"plugin", "cli"},
)


def module_imports() -> dict[str, set[str]]:
    """Module name (relative to the package) -> the package's modules it imports, anywhere in it."""
    names = {".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__").removesuffix(
        "__init__") or "pytest_dlmbench": path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                       [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                if not module.startswith("pytest_dlmbench"):
                    continue
                short = module.removeprefix("pytest_dlmbench.") if module != "pytest_dlmbench" else module
                submodules = {f"{short}.{alias.name}" for alias in getattr(node, "names", [])} & names.keys()
                found |= submodules or {short}
        graph[name] = found - {name}
    return graph


def test_imports_only_point_down_the_layers():
    layer = {module: index for index, modules in enumerate(LAYERS) for module in modules}
    graph = module_imports()
    assert set(graph) == set(layer), "place every module in a layer"
    upward = [f"{module} -> {target}" for module, targets in graph.items() for target in targets
              if layer[target] >= layer[module]]
    assert upward == []
    assert graph["core"] == set()


def test_the_options_table_fills_every_settings_field_and_probes_get_them_all():
    fields = {field.name for field in dataclasses.fields(Settings)} - {"decode", "gpu_index", "worker"}  # per process
    decode_fields = {f"decode.{field.name}" for field in dataclasses.fields(DecodeOptions)} - {
        "decode.tpf", "decode.refresh_every_step", "decode.seed", "decode.replay"}  # set per point, and by tests
    assert {option.field for option in OPTIONS} == fields | decode_fields
    assert len({option.flag for option in OPTIONS}) == len(OPTIONS)
    changed = {field.name: value for field, value in zip(dataclasses.fields(Settings), (
        "paper", ("dlm",), ("llada-8b",), (40,), (256,), (4, 16), 7, 9, 2, 12.5, "fp16", "cuda:1",
        (("llada-8b", "/ckpt"),), "gsm8k", "/data", DecodeOptions(16, 64, 0.8, 2.5, 4, True, 3.0, 0.7, 5, (((1,),),)),
        ("parallel",), ("eager",), ("lean",), "trace.json", 2.0, True, 64, "on", 24.0, 500.0, 2000.0, True, ("tokens_per_s:5%",), "base.json", "j.jsonl", True, 3, (0, 0, 1), (2, 4), 1,
        "gw1"),
        strict=True)}
    settings = Settings(**changed)
    assert all(getattr(settings, name) != getattr(Settings(), name) for name in changed)  # every field differs
    assert Settings.from_json(settings.to_json()) == settings


GRID_TEST = """
def test_generation(dlm_bench, dlm_point):
    dlm_bench(dlm_point)
"""


def test_a_smoke_run_saves_the_committed_record(pytester):
    committed = json.loads((Path(__file__).parent / "data" / "smoke_record.json").read_text())
    pytester.makepyfile(test_grid=GRID_TEST)
    assert pytester.runpytest("--dlm-rounds=1", "-p", "no:cacheprovider", "--benchmark-json=out.json").ret == 0
    saved = {bench["fullname"].partition("[")[2].rstrip("]"): bench["extra_info"]
             for bench in json.loads((pytester.path / "out.json").read_text())["benchmarks"]}
    assert saved.keys() == committed["points"].keys()
    for point, info in saved.items():
        assert sorted(info) == committed["keys"], point
        expected = committed["points"][point]
        numbers = [key for key, value in expected.items() if isinstance(value, float)]
        assert {key: info[key] for key in expected if key not in numbers} == {
            key: value for key, value in expected.items() if key not in numbers}, point
        assert [info[key] for key in numbers] == pytest.approx([expected[key] for key in numbers], rel=1e-9), point


def test_the_tests_own_sessions_measure_the_cpu(pytester):
    """Whatever this machine has: on a GPU, the defaults would pick CUDA and the 8B grid."""
    pytester.makepyfile(test_device="""
import os

def test_device(dlm_settings, pytestconfig):
    assert "--dlm-device=cpu" in os.environ["PYTEST_ADDOPTS"] and pytestconfig.getoption("dlm_device") == "cpu"
    assert dlm_settings.device == "cpu" and dlm_settings.grid == "smoke" and dlm_settings.dtype == "fp32"
""")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=pytester.path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_every_record_key_is_documented_and_the_metrics_page_is_generated_from_the_keys():
    from pytest_dlmbench.core import UNDESCRIBED, BenchPoint, PointLabels
    from pytest_dlmbench.record import failed_record
    from pytest_dlmbench.record_keys import documented_keys, record_keys_markdown

    saved = failed_record(PointLabels.of(BenchPoint("ar", "tiny-ar", 4, 8, 1), Settings()), UNDESCRIBED, "error",
                          "x").to_extra_info()  # every key, null where unknown
    documented = documented_keys()
    assert len(documented) == len(set(documented)), "a key documented twice"
    assert set(documented) == set(saved), (set(saved) - set(documented), set(documented) - set(saved))
    page = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    assert record_keys_markdown() in page, "docs/metrics.md is stale: python -m pytest_dlmbench.record_keys"


def test_the_options_page_is_generated_from_the_options_table():
    from pytest_dlmbench.options import options_markdown

    page = Path(__file__).parent.parent / "docs" / "options.md"
    assert page.read_text() == options_markdown(), "docs/options.md is stale: python -m pytest_dlmbench.options"
