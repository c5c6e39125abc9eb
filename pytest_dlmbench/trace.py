"""Acceptance traces: how many positions each row committed at each step of a real checkpoint's
generation, saved so that a random-weight run of the same point can replay them.

    {"schema": 1, "points": [{"paradigm": "dlm", "model": "llada-8b", "prompt_len": 40, "gen_len": 256,
      "batch_size": 4, "strategy": "parallel", "commits": [[[3, 1, 2, 2], ...], ...]}]}

`commits[span][step][row]`: a span is a dlm block or a block-diffusion sub-block. Points are
matched on paradigm, model, prompt, gen, batch and strategy (any runtime and fidelity). A write
replaces the file whole, so a crash leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pytest_dlmbench.core import BenchPoint

TRACE_SCHEMA = 1
KEY_FIELDS = ("paradigm", "model", "prompt_len", "gen_len", "batch_size", "strategy")

Commits = tuple[tuple[tuple[int, ...], ...], ...]


class TraceError(ValueError):
    """An acceptance trace that cannot be read or has no entry for a point."""


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(f"acceptance trace {str(path)!r} does not exist; a run with --dlm-checkpoint writes "
                         "one") from None
    except json.JSONDecodeError as error:
        raise TraceError(f"acceptance trace {str(path)!r} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("schema") != TRACE_SCHEMA:
        schema = data.get("schema") if isinstance(data, dict) else None
        raise TraceError(f"acceptance trace {str(path)!r} has schema {schema!r}; "
                         f"this version reads {TRACE_SCHEMA}")
    return data["points"]


def read_commits(path: str, point: BenchPoint) -> Commits:
    """The commits recorded for `point` (matched on its acceptance key)."""
    for entry in _read(Path(path)):
        if tuple(entry[name] for name in KEY_FIELDS) == point.acceptance_key:
            return tuple(tuple(tuple(step) for step in span) for span in entry["commits"])
    raise TraceError(f"acceptance trace {path!r} has no entry for {point.id} (it is matched on "
                     f"{', '.join(KEY_FIELDS)})")


def write_commits(path: str, point: BenchPoint, commits: Commits) -> None:
    """Add or replace `point`'s entry, atomically."""
    target = Path(path)
    entries = _read(target) if target.exists() else []
    entries = [entry for entry in entries if tuple(entry[name] for name in KEY_FIELDS) != point.acceptance_key]
    entries.append(dict(zip(KEY_FIELDS, point.acceptance_key)) | {"commits": commits})
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w") as out:
        json.dump({"schema": TRACE_SCHEMA, "points": entries}, out)
    os.replace(temporary, target)
