"""What pytest_dlmbench/integrations/ relies on in pytest-benchmark, pytest-xdist and transformers:
each test fails when that library changes the internal its adapter uses. (Entries timed by xdist
workers, saved and compared by the controller: tests/test_workers.py.)"""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import transformers.models.llama.modeling_llama  # noqa: F401  (inline pytester runs keep it imported)

from pytest_dlmbench.integrations import pytest_benchmark as benchmark_adapter
from pytest_dlmbench.integrations.transformers import attention_implementation, replaced_forwards
from pytest_dlmbench.integrations.xdist import GroupScheduling, worker_of
from pytest_dlmbench.models import build_model, get_spec

pytest_plugins = ["pytester"]

# Run inside a pytester session: the internals the adapter reads, where the adapter reads them.
BENCHMARK_INTERNALS = """
from pytest_dlmbench.integrations.pytest_benchmark import timed_entry

def test_one(benchmark, request):
    benchmark(sum, [1, 2])
    session = request.config._benchmarksession
    assert isinstance(session.benchmarks, list) and session.benchmarks[-1] is benchmark.stats
    assert session.benchmarks[-1].extra_info == {}
    assert hasattr(benchmark, "disabled")
    entry = timed_entry(benchmark)
    assert entry["fullname"].endswith("test_one") and entry["stats"]["data"]
"""


def test_pytest_benchmark_session_fixture_and_entries(pytester):
    pytester.makepyfile(test_internals=BENCHMARK_INTERNALS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--dlm-device=cpu")
    result.assert_outcomes(passed=1)


def test_pytest_benchmark_file_storage_saves_through_the_replacement(pytester):
    from pytest_benchmark.storage.file import FileStorage

    assert benchmark_adapter.file_save_replaced()
    assert list(inspect.signature(FileStorage.__init__).parameters)[:2] == ["self", "path"]
    pytester.makepyfile(test_one="def test_one(benchmark):\n    benchmark(sum, [1])\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--dlm-device=cpu", "--benchmark-save=one",
                                          f"--benchmark-storage={pytester.path / 'runs'}")
    result.assert_outcomes(passed=1)
    saved = list((pytester.path / "runs").glob("*/0001_one.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["benchmarks"][0]["name"] == "test_one"
    assert saved[0].parent.name == benchmark_adapter.machine_id()


def test_xdist_scope_scheduler_internals(pytester):
    from xdist.scheduler import LoadScopeScheduling

    for method, parameters in {"_split_scope": ["self", "nodeid"], "_reschedule": ["self", "node"],
                               "_assign_work_unit": ["self", "node"], "_pending_of": ["self", "workload"],
                               "remove_node": ["self", "node"]}.items():
        assert list(inspect.signature(getattr(LoadScopeScheduling, method)).parameters) == parameters, method
    scheduling = GroupScheduling(pytester.parseconfig("--tx=3*popen"), None, lambda workers: {"a-p1": f"a#{workers}"})
    assert scheduling.numnodes == 3 and scheduling.assigned_work == {} and not scheduling.workqueue
    assert scheduling._split_scope("t.py::test[a-p1]") == "a#3"
    assert scheduling._split_scope("t.py::test[b-p1]") == "t.py::test[b-p1]"


def test_xdist_crash_hook_and_report():
    from xdist import newhooks

    assert list(inspect.signature(newhooks.pytest_handlecrashitem).parameters) == ["crashitem", "report", "sched"]
    report = pytest.TestReport("t.py::x", ("t.py", 0, "x"), {}, "failed", "worker 'gw1' crashed", "???")
    report.node = type("Worker", (), {"gateway": type("Gateway", (), {"id": "gw1"})()})()  # as xdist sets it
    assert worker_of(report) == "gw1"


def test_transformers_runs_the_configured_attention_and_calls_layers_as_replaced():
    model = build_model(get_spec("tiny-ar"), torch.device("cpu"), torch.float32)
    ids = torch.randint(0, 32, (1, 5))  # (B, n)
    calls: list[tuple[int, set[str]]] = []
    forwards = [lambda hidden, *args, index=index, **kwargs: (calls.append((index, set(kwargs))), hidden)[1]
                for index in range(model.config.num_hidden_layers)]
    with torch.inference_mode(), attention_implementation(model, "dlmbench_test"), \
            replaced_forwards(model.get_decoder().layers, forwards):
        assert model.config._attn_implementation == "dlmbench_test"
        model(ids, use_cache=False)
    assert model.config._attn_implementation != "dlmbench_test"
    assert [index for index, _ in calls] == list(range(model.config.num_hidden_layers))
    assert all("position_embeddings" in kwargs for _, kwargs in calls)  # what fused.layer_forward reads
    with torch.inference_mode():
        assert all("forward" not in vars(layer) for layer in model.get_decoder().layers)
        assert model(ids, use_cache=False).logits.shape == (1, 5, model.config.vocab_size)
