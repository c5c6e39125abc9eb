"""Extensions: what other packages add (models, strategies, paradigms, runtimes) and where it came from.

An installed package declares an entry point in the `dlmbench` group; loading it (a module, or a
callable, which is then called) registers its additions through `pytest_dlmbench.api`. Every
process loads them the same way: the pytest session when it parses its options, and each isolated
probe process before it builds its point. Modules that register without an entry point (a
conftest's import, `-p module`) are remembered by name, so a probe process imports them too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "dlmbench"


class ExtensionError(RuntimeError):
    """An extension that cannot be loaded, named with its package."""


@dataclass(frozen=True)
class Extension:
    """One source of registrations, as `machine_info["dlmbench_extensions"]` records it."""

    module: str
    entry_point: str | None = None  # its name in the `dlmbench` group (None: imported otherwise)
    distribution: str | None = None
    version: str | None = None


_LOADED: dict[str, Extension] = {}  # module -> where it came from
_entry_points_loaded = False


def load_extensions() -> list[Extension]:
    """Load every installed `dlmbench` entry point once per process; the extensions so far."""
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for point in entry_points(group=ENTRY_POINT_GROUP):
            distribution = point.dist
            package = distribution.name if distribution else "a package"
            where = f"entry point {point.name!r} ({point.value}) of {package}"
            try:
                loaded = point.load()
                if callable(loaded) and not isinstance(loaded, type):
                    loaded()
            except Exception as error:
                raise ExtensionError(f"{ENTRY_POINT_GROUP} {where} failed to load: {type(error).__name__}: "
                                     f"{error}") from error
            module = point.value.partition(":")[0]
            _LOADED[module] = Extension(module, point.name, distribution.name if distribution else None,
                                        distribution.version if distribution else None)
    return list(_LOADED.values())


def registered_from(module: str) -> None:
    """Remember a module that registered something (api.py calls this with its caller's module)."""
    if module.startswith("pytest_dlmbench") or module in _LOADED:
        return
    version = getattr(sys.modules.get(module.partition(".")[0]), "__version__", None)
    _LOADED[module] = Extension(module, version=version if isinstance(version, str) else None)


def importable_modules() -> list[str]:
    """The modules a fresh process imports to register what this one did without an entry point."""
    return [extension.module for extension in _LOADED.values()
            if extension.entry_point is None and extension.module != "__main__"
            and not extension.module.endswith("conftest")
            and importlib.util.find_spec(extension.module.partition(".")[0]) is not None]


def import_modules(modules: list[str]) -> None:
    """In a probe process: load the entry points, then the parent's other registering modules."""
    load_extensions()
    for module in modules:
        importlib.import_module(module)


def machine_info() -> list[dict[str, Any]]:
    return [asdict(extension) for extension in load_extensions()]
