"""A run's points as they end, one JSON line each, so a run killed before it saves keeps them.

pytest-benchmark writes its file when the session ends; a run killed earlier (a CI timeout, a
lost machine) would lose every point. With `--dlm-journal=PATH` each point is appended when its
test ends, flushed to disk. The first line carries the machine and commit; the dlmbench commands
read a journal like a saved run, and `dlmbench merge PATH --out RUN.json` turns it into one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from pytest_dlmbench.integrations.pytest_benchmark import dumps

JOURNAL_KEY = "dlmbench_journal"  # the header line's marker and format version
JOURNAL_VERSION = 1


class Journal:
    """Appends `(list key, entry)` records to a new file, the header first."""

    def __init__(self, path: str | Path, header: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(path)
        self._header = header  # called once, at the first point: building it may need the device
        self._stream: IO[str] | None = None

    def append(self, key: str, entry: dict[str, Any]) -> None:
        if self._stream is None:
            self._stream = open(self.path, "x", encoding="utf8")  # noqa: SIM115 - open for the whole run
            self._write({JOURNAL_KEY: JOURNAL_VERSION, **self._header()})
        self._write({"key": key, "entry": entry})

    def _write(self, record: dict[str, Any]) -> None:
        assert self._stream is not None
        self._stream.write(dumps(record) + "\n")  # as pytest-benchmark saves: a parameter object is its repr
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


def is_journal(text: str) -> bool:
    first = text.lstrip().partition("\n")[0]
    try:
        return JOURNAL_KEY in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        return False


def journal_document(text: str) -> dict[str, Any]:
    """The run document a journal stands for. A last line cut short by the kill is dropped."""
    lines = text.splitlines()
    document = {key: value for key, value in json.loads(lines[0]).items() if key != JOURNAL_KEY}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise
        document.setdefault(record["key"], []).append(record["entry"])
    document.setdefault("benchmarks", [])
    return document
