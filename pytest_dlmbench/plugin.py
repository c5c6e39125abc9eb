"""pytest hooks and fixtures of pytest-dlmbench (loaded through the `pytest11` entry point).

Hooks only: options are parsed into a frozen Settings in `pytest_configure`; the machine-
dependent parts ("auto" device/dtype/grid) are resolved the first time a benchmark needs them,
so runs without benchmarks, and `pytest --help`, never import torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Iterator
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import pytest

from pytest_dlmbench.core import BenchPoint, PointMetrics, Settings
from pytest_dlmbench.grid import SelectionError, boundary_points_for, points_for
from pytest_dlmbench.integrations.pytest_benchmark import (
    as_saved,
    enable_in_worker,
    settle_saved_list,
    silence_xdist_warning,
    timed_entry,
)
from pytest_dlmbench.options import add_options, settings_from_config
from pytest_dlmbench.session import DlmSession
from pytest_dlmbench.workers import is_controller, is_worker, timed_in_worker, worker_count

if TYPE_CHECKING:
    from pytest_dlmbench.boundary import BoundaryRunner
    from pytest_dlmbench.gate import GateRule
    from pytest_dlmbench.journal import Journal
    from pytest_dlmbench.loader import ModelCache
    from pytest_dlmbench.memory import MemoryTracker
    from pytest_dlmbench.roofline import Peaks
    from pytest_dlmbench.runner import PointRunner
    from pytest_dlmbench.store import SavedRun
    from pytest_dlmbench.timing import RegionTimer
    from pytest_dlmbench.workers import Controller, Received

SESSION = pytest.StashKey[DlmSession]()


def dlm_session(config: pytest.Config) -> DlmSession:
    """The plugin's state for this session."""
    return config.stash[SESSION]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_dlmbench.extensions import ExtensionError, load_extensions

    try:
        load_extensions()  # before the options are read: they may name what an extension adds
    except ExtensionError as error:
        raise pytest.UsageError(str(error)) from None
    settings = settings_from_config(config)
    if is_worker(config):
        from pytest_dlmbench.workers import worker_settings

        settings = worker_settings(config, settings)
    session = config.stash[SESSION] = DlmSession(settings)
    if settings.devices is not None:  # pytest-benchmark < 5.2 warns here that it times nothing: untrue of points
        silence_xdist_warning()
    if settings.warmup == 0:
        config.issue_config_time_warning(UserWarning(
            "--dlm-warmup=0: each point's timed rounds include its first generation at its shapes, and with it "
            "one-time costs (e.g. cuDNN attention plans built per new sequence length: autoregressive decoding "
            "read about 3x slower on an H100). The graphs runtime still captures in an untimed run, so eager and "
            "graphs points are not comparable. Fine for smoke checks; use warm-up >= 1 for results and gating."),
            stacklevel=2)
    if is_controller(config):
        controller = _controller(config, settings)
        session.controller = controller
        config.pluginmanager.register(controller, "dlmbench-controller")
    elif settings.devices is not None and not is_worker(config):
        from pytest_dlmbench.workers import devices_text

        raise pytest.UsageError(f"--dlm-devices={devices_text(settings.devices)}: needs pytest-xdist workers (-n N); "
                                "one process picks its GPU with --dlm-device=cuda:N")
    if not is_worker(config):
        _check_outputs(config)
    if settings.journal is not None and not is_worker(config):
        session.journal = _open_journal(config, settings.journal)
    from pytest_dlmbench.store import install_exclusive_save

    install_exclusive_save()


def _check_outputs(config: pytest.Config) -> None:
    """Where the run will be saved must take a file now, not after the whole grid has run."""
    from pathlib import Path

    from pytest_dlmbench.store import RunFileError, check_writable, storage_folder

    storage = str(config.getoption("benchmark_storage", "") or "")
    json_path = config.getoption("benchmark_json", None)
    try:
        if (config.getoption("benchmark_save", None) or config.getoption("benchmark_autosave", False)) and (
                "://" not in storage or storage.startswith("file://")):
            check_writable(storage_folder(storage), "--benchmark-save")
        if json_path is not None:  # a path (pytest-benchmark >= 5.3), or the file it opened (5.2)
            path = Path(json_path if isinstance(json_path, (str, Path)) else json_path.name)
            check_writable(path.absolute().parent, "--benchmark-json", create=False)
    except RunFileError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """pytest-benchmark warns as a worker ends that it timed nothing; untrue where every benchmark
    was a point (timed here), so that warning is silenced there."""
    if is_worker(config) and SESSION in config.stash and dlm_session(config).all_timed and timed_in_worker(config):
        silence_xdist_warning()


def _controller(config: pytest.Config, settings: Settings) -> Controller:
    """The controller of a pytest-xdist session, with --dlm-devices' GPUs to hand out."""
    from pytest_dlmbench.workers import Controller, GpuSlots, devices_text

    keep, resolved = functools.partial(_keep_received, config), functools.partial(resolved_settings, config)
    if settings.devices is None:
        return Controller(resolved, None, keep)
    if settings.device != "auto":
        raise pytest.UsageError(f"--dlm-device={settings.device} with --dlm-devices={devices_text(settings.devices)}: "
                                "give one; each worker's device is its GPU from --dlm-devices")
    return Controller(resolved, GpuSlots(_gpu_slots(config, settings.devices)), keep)


def _gpu_slots(config: pytest.Config, devices: tuple[int, ...] | str) -> tuple[int, ...]:
    from pytest_dlmbench.device import visible_gpus
    from pytest_dlmbench.workers import gpu_slots

    workers = config.getoption("numprocesses", None)
    try:
        return gpu_slots(devices, visible_gpus(), workers if isinstance(workers, int) else None)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` with --dlm-devices: one worker per listed GPU."""
    devices = config.getoption("dlm_devices", None)
    return None if devices is None else len(_gpu_slots(config, devices))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With --dlm-devices and xdist's default distribution (load): benchmark points grouped by model."""
    if dlm_session(config).settings.devices is None or config.getoption("dist") != "load":
        return None
    return model_scheduler(config, log)


def model_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist scheduling of this session's points by model (scheduling.py)."""
    from pytest_dlmbench.scheduling import model_scheduling

    settings = resolved_settings(config)
    try:
        points = {point.id: point for point in points_for(settings)}
        if settings.boundary:
            points |= {point.boundary_id: point for point in boundary_points_for(settings)}
    except SelectionError:
        points = {}  # the workers' collection reports it
    return model_scheduling(config, log, points)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    """In a worker: the point on its setup report, its record and saved entry on its call report."""
    outcome = yield
    if not is_worker(item.config):
        return
    import dataclasses

    from pytest_dlmbench.workers import POINT_ATTR, RESULT_ATTR

    report = outcome.get_result()
    params = getattr(getattr(item, "callspec", None), "params", {})
    point = params.get("dlm_point") or params.get("dlm_boundary_point")
    metrics = dlm_session(item.config).results.get(item.nodeid)
    if call.when == "setup" and point is not None:
        setattr(report, POINT_ATTR, dataclasses.asdict(point))
    elif call.when == "call" and metrics is not None:
        saved = _saved_entry(item.nodeid, metrics, getattr(item, "funcargs", {}).get("benchmark"))
        setattr(report, RESULT_ATTR, as_saved({"record": metrics.to_extra_info(), "saved": saved}))


def _keep_received(config: pytest.Config, received: Received) -> None:
    """In the controller: a worker's point, kept as if this process had run it."""
    from pytest_dlmbench.workers import record_of

    session = dlm_session(config)
    session.keep(received.test_id, record_of(received))
    if session.journal is not None and received.saved is not None:
        session.journal.append(*received.saved)


def _open_journal(config: pytest.Config, path: str) -> Journal:
    """A journal for a new file at `path`; an existing file (another run's points) is never touched."""
    from pathlib import Path

    from pytest_dlmbench.journal import Journal
    from pytest_dlmbench.store import SCHEMA_KEY, SCHEMA_VERSION

    if not path or Path(path).is_dir():
        raise pytest.UsageError(f"--dlm-journal={path!r}: needs the path of a new file, not a folder")
    if Path(path).exists():
        raise pytest.UsageError(f"--dlm-journal={path}: the file exists; remove it or name a new one")
    if not Path(path).parent.is_dir():
        raise pytest.UsageError(f"--dlm-journal={path}: the folder {Path(path).parent} does not exist")

    def header() -> dict[str, Any]:  # the saved file's fields but its points, built as pytest-benchmark builds them
        machine = config.hook.pytest_benchmark_generate_machine_info(config=config)
        config.hook.pytest_benchmark_update_machine_info(config=config, machine_info=machine)
        commit = config.hook.pytest_benchmark_generate_commit_info(config=config)
        config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit)
        document = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=[], include_data=True,
                                                               machine_info=machine, commit_info=commit)
        del document["benchmarks"]
        return document | {SCHEMA_KEY: SCHEMA_VERSION}

    return Journal(path, header)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Load and check the gate's baseline before any benchmark runs: a bad baseline fails fast."""
    config = session.config
    state = dlm_session(config)
    settings = state.settings
    compare = config.getoption("benchmark_compare", None)
    if not settings.gate and settings.baseline is None:
        return
    from pytest_dlmbench.machine import machine_info
    from pytest_dlmbench.store import RunFileError, benchmark_compare_file, load_run, machine_mismatch

    try:
        if settings.baseline is not None:
            path = settings.baseline
        elif compare:
            path = str(benchmark_compare_file(config.getoption("benchmark_storage"), compare))
        else:
            raise pytest.UsageError("--dlm-gate needs a baseline: --dlm-baseline=PATH or --benchmark-compare")
        baseline = load_run(path)
        baseline.check_baseline()
    except RunFileError as error:
        raise pytest.UsageError(f"gate baseline: {error}") from None
    differences = machine_mismatch(baseline.machine, machine_info(resolved_settings(config)))
    if differences and not settings.allow_mismatch and not is_worker(config):  # a worker sees its GPU only
        raise pytest.UsageError(
            f"gate baseline {baseline.path} comes from a different machine or software: "
            + "; ".join(differences) + " (--dlm-allow-mismatch compares anyway)"
        )
    from pytest_dlmbench.gate import GateError, check_rules

    try:
        check_rules(gate_rules(settings), baseline.points)
    except GateError as error:
        raise pytest.UsageError(f"{error} (in {baseline.path})") from None
    state.gate_baseline = baseline


def gate_rules(settings: Settings) -> list[GateRule]:
    """The rules the session gate applies: --dlm-gate's, or the default with only a baseline."""
    from pytest_dlmbench.gate import DEFAULT_GATE, GateRule

    return [GateRule.parse(rule) for rule in settings.gate or DEFAULT_GATE]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """Runs before pytest-benchmark saves (its own hook wrapper saves on entry)."""
    config = session.config
    state = dlm_session(config)
    stopped = "interrupted" if session.exitstatus == pytest.ExitCode.INTERRUPTED else session.shouldfail or \
        session.shouldstop
    if stopped:  # saved as partial, never a baseline; the point cut off mid-measurement has no record
        state.partial = f"stopped before the selection ended: {stopped}"
    settle_saved_list(config, drop_unlabelled=bool(stopped),
                      received=[] if state.controller is None else state.controller.benchmarks,
                      save_if_empty=bool(state.results))  # a run of failed points only is a result too
    if not is_worker(config):
        _gate(session)
    if state.journal is not None:
        state.journal.close()
    yield


def _gate(session: pytest.Session) -> None:
    state = dlm_session(session.config)
    if state.gate_baseline is None:
        return
    from pytest_dlmbench.gate import NOTHING_COMPARED_PYTEST, compare, compared_points

    current = {test_id: metrics.to_extra_info() for test_id, metrics in state.results.items()}
    verdicts = compare(state.gate_baseline.points, current, gate_rules(state.settings))
    state.verdicts = verdicts
    if any(verdict.fails for verdict in verdicts):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif not compared_points(verdicts) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = NOTHING_COMPARED_PYTEST


def resolved_settings(config: pytest.Config) -> Settings:
    """The settings with this machine's device, dtype and grid (resolved once)."""
    session = dlm_session(config)
    if session.resolved is None:
        from pytest_dlmbench.workers import refuse_shared_gpu

        try:
            resolved = session.settings.resolved()
        except ValueError as error:
            raise pytest.UsageError(str(error)) from None
        refuse_shared_gpu(config, resolved)
        session.resolved = resolved
    return session.resolved


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests that ask for `dlm_point` (grid points) or `dlm_boundary_point` (boundary
    searches, with --dlm-boundary) over the selection."""
    config = metafunc.config
    for name, select, ids in (("dlm_point", points_for, lambda p: p.id),
                              ("dlm_boundary_point", boundary_points_for, lambda p: p.boundary_id)):
        if name not in metafunc.fixturenames:
            continue
        if name == "dlm_boundary_point" and not dlm_session(config).settings.boundary:
            skip = pytest.mark.skip(reason="the OOM boundary search runs with --dlm-boundary")
            metafunc.parametrize(name, [pytest.param(None, marks=skip, id="off")])
            continue
        try:
            points = select(resolved_settings(config))
        except (pytest.UsageError, SelectionError) as error:
            if is_worker(config):  # xdist shows it as the module's collection error and stops the run
                raise pytest.UsageError(str(error)) from None
            dlm_session(config).selection_error = str(error)
            points = []
        metafunc.parametrize(name, points, ids=[ids(point) for point in points])


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    session = dlm_session(config)
    if session.selection_error is not None:
        raise pytest.UsageError(session.selection_error)
    params = [getattr(getattr(item, "callspec", None), "params", {}) for item in items]
    points = [parameters["dlm_point"] for parameters in params if "dlm_point" in parameters]
    session.baseline_shapes = {point.shape_key for point in points if point.strategy == "baseline"}
    fixtures = [getattr(item, "fixturenames", ()) for item in items]
    session.all_timed = all("dlm_bench" in names for names in fixtures if "benchmark" in names)
    if session.gate_baseline is not None:
        session.gate_rounds = _gate_rounds(config, session.gate_baseline, items)


def _gate_rounds(config: pytest.Config, baseline: SavedRun, items: list[pytest.Item]) -> dict[str, int]:
    """Timed rounds per gated point; a warning names the points even the cap cannot decide."""
    from pytest_dlmbench.gate import RoundsPlan

    settings = dlm_session(config).settings
    plan = RoundsPlan.for_points(baseline.points, [item.nodeid for item in items],
                                 gate_rules(settings), settings.max_rounds)
    if plan.capped:
        capped = plan.capped
        config.issue_config_time_warning(UserWarning(
            f"{len(capped)} gated point(s) ({', '.join(capped[:3])}{', ...' if len(capped) > 3 else ''}) have too few "
            f"baseline rounds for the gate to reach its level {plan.level:.2g} ({plan.family} comparisons) "
            f"even with --dlm-max-rounds={settings.max_rounds}: their changes beyond the threshold will be "
            "inconclusive; re-measure the baseline with more --dlm-rounds"), stacklevel=2)
    return plan.rounds


def _line_writer(config: pytest.Config) -> Callable[[str], None] | None:
    """Write progress lines straight to the terminal, past output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return None
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
            reporter.write_line(line)

    return write


@pytest.fixture(scope="session")
def dlm_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved --dlm-* settings of this session."""
    return resolved_settings(pytestconfig)


@pytest.fixture(scope="session")
def dlm_model(dlm_settings: Settings, pytestconfig: pytest.Config) -> Iterator[ModelCache]:
    """Session-wide model cache: ``dlm_model.get(name)``; one model in memory at a time."""
    from pytest_dlmbench.device import limit_memory, share_cpu
    from pytest_dlmbench.loader import ModelCache

    limit_memory(dlm_settings.torch_device, dlm_settings.memory_limit_gib)
    share_cpu(dlm_settings.torch_device, worker_count(pytestconfig))
    cache = ModelCache(dlm_settings)
    yield cache
    cache.release()


@pytest.fixture(scope="session")
def dlm_peaks(dlm_settings: Settings) -> Peaks | None:
    """The GPU's roofs for the roofline fields (None off CUDA)."""
    from pytest_dlmbench.roofline import device_peaks

    return device_peaks(dlm_settings)


@pytest.fixture
def cuda_timer(dlm_settings: Settings) -> RegionTimer:
    """Times regions on the benchmark device: ``with cuda_timer.region("x"): ...``; ``cuda_timer.read()``."""
    from pytest_dlmbench.timing import RegionTimer

    return RegionTimer(dlm_settings.torch_device)


@pytest.fixture
def gpu_memory(dlm_settings: Settings) -> Callable[[], MemoryTracker]:
    """Makes memory trackers: ``with gpu_memory() as tracker: ...``; then ``tracker.report``."""
    from pytest_dlmbench.memory import MemoryTracker

    return functools.partial(MemoryTracker, dlm_settings.torch_device)


@pytest.fixture
def dlm_bench(
    benchmark: Any, dlm_settings: Settings, dlm_model: ModelCache, dlm_peaks: Peaks | None, pytestconfig: pytest.Config,
    request: pytest.FixtureRequest,
) -> Iterator[PointRunner]:
    """Runs one point: ``dlm_bench(dlm_point)`` or ``dlm_bench(point, generate=fn, vocab_size=n)``."""
    from pytest_dlmbench.runner import PointRunner

    if timed_in_worker(pytestconfig):
        enable_in_worker(benchmark)  # this worker times its points; the controller saves them

    def skip_out_of_memory(point: BenchPoint, metrics: PointMetrics) -> None:
        pytest.skip(f"OOM: {point.id} ({(metrics.message or '').partition(chr(10))[0][:200]})")

    session, test_id = dlm_session(pytestconfig), request.node.nodeid
    yield PointRunner(benchmark, dlm_settings, dlm_model, session, test_id, peaks=dlm_peaks,
                      write_line=_line_writer(pytestconfig), on_oom=skip_out_of_memory)
    metrics = session.results.get(test_id)
    saved = None if metrics is None else _saved_entry(test_id, metrics, benchmark)
    if session.journal is not None and saved is not None:
        session.journal.append(*saved)


def _saved_entry(test_id: str, metrics: PointMetrics, benchmark: Any) -> tuple[str, dict[str, Any]] | None:
    """The point as the saved file holds it: (list key, entry); None for a finished point that
    pytest-benchmark does not save (its benchmark failed)."""
    from pytest_dlmbench.store import FAILED_KEY, failed_entry

    entry = timed_entry(benchmark)
    if metrics.status == "ok" and entry is not None:
        return "benchmarks", entry
    if metrics.status != "ok":
        return FAILED_KEY, failed_entry(test_id, metrics.to_extra_info())
    return None


@pytest.fixture
def dlm_boundary(dlm_settings: Settings, dlm_model: ModelCache, dlm_bench: PointRunner) -> BoundaryRunner:
    """Finds a point's OOM boundary: ``dlm_boundary(dlm_boundary_point)``, or a user's generate's:
    ``dlm_boundary(point, generate=fn)``."""
    from pytest_dlmbench.boundary import BoundaryRunner

    return BoundaryRunner(dlm_settings, dlm_model, dlm_bench)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    from pytest_dlmbench.machine import machine_info as dlmbench_machine_info

    controller = dlm_session(config).controller
    from pytest_dlmbench.extensions import machine_info as extensions_info

    machine_info["dlmbench"] = dlmbench_machine_info(resolved_settings(config),
                                                     None if controller is None else controller.placement())
    machine_info["dlmbench"]["extensions"] = extensions_info()  # what other packages added, with versions


def pytest_benchmark_update_json(config: pytest.Config, output_json: dict[str, Any]) -> None:
    """Stamp the schema, and save the points pytest-benchmark drops because they did not finish."""
    from pytest_dlmbench.store import FAILED_KEY, PARTIAL_KEY, SCHEMA_KEY, SCHEMA_VERSION, failed_entry

    session = dlm_session(config)
    output_json[SCHEMA_KEY] = SCHEMA_VERSION
    if session.partial is not None:
        output_json[PARTIAL_KEY] = session.partial
    output_json[FAILED_KEY] = [failed_entry(test_id, metrics.to_extra_info())
                               for test_id, metrics in session.results.items() if metrics.status != "ok"]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = dlm_session(config)
    if session.results:
        from pytest_dlmbench.report import summary_table

        terminalreporter.section("dlmbench")
        terminalreporter.write_line(summary_table(session.results.values()))
    if session.verdicts is not None and session.gate_baseline is not None:
        from pytest_dlmbench.gate import compared_points, verdict_table

        verdicts, path = session.verdicts, session.gate_baseline.path
        failed = sum(verdict.fails for verdict in verdicts)
        terminalreporter.section("dlmbench gate", red=bool(failed), green=not failed)
        terminalreporter.write_line(verdict_table(verdicts))
        terminalreporter.write_line(f"{failed} regression(s) against {path}")
        if not compared_points(verdicts):
            terminalreporter.write_line(f"no point of this run matches a point of {path}: nothing was compared",
                                        red=True)
