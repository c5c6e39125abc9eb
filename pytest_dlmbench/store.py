"""Saved runs: strict loading with clear errors, the schema version, machine matching, atomic writes.

A gate must never pass because a baseline could not be read: every problem with a file
(missing, empty, truncated, not JSON, wrong shape, newer schema) is a `RunFileError` naming it.
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_dlmbench.gate import DIRECTIONS, LATENCY_EXPONENT
from pytest_dlmbench.integrations.pytest_benchmark import dumps, machine_id, replace_file_save
from pytest_dlmbench.journal import is_journal, journal_document

SCHEMA_KEY = "dlmbench_schema"
FAILED_KEY = "dlmbench_failed"  # points that ran out of memory or failed: pytest-benchmark keeps only finished ones
PARTIAL_KEY = "dlmbench_partial"  # why a run stopped before its selection ended (Ctrl-C, -x); absent: it did not
PARTIAL_PREFIX = "partial-"  # a partial --benchmark-save: outside the NNNN_ names that compare picks from
SCHEMA_VERSION = 1
# machine_info["dlmbench"] fields that must agree for two runs to be comparable.
MATCHED_MACHINE_FIELDS = ("gpu_name", "gpu_count", "device", "dtype", "torch", "transformers", "cuda",
                          "pytorch_cuda_alloc_conf")  # the allocator's settings move memory peaks and OOM boundaries


class RunFileError(ValueError):
    """A saved run that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class SavedRun:
    path: str
    machine: dict[str, Any]  # machine_info["dlmbench"]
    points: dict[str, dict[str, Any]]  # test id (pytest-benchmark "fullname") -> extra_info
    partial: str | None = None  # why the run stopped early; such a run is never a baseline
    commit: str | None = None  # the measured tree's git commit (pytest-benchmark's commit_info.id)
    saved_at: str | None = None  # when the run was saved (ISO 8601, pytest-benchmark's datetime)

    def check_baseline(self) -> None:
        if self.partial:
            raise RunFileError(f"{self.path}: a partial run ({self.partial}), not a baseline")


def _read_text(path: Path) -> str:
    if path.suffix == ".xz":
        with lzma.open(path, "rt", encoding="utf8") as stream:
            return stream.read()
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf8") as stream:
            return stream.read()
    return path.read_text(encoding="utf8")


def read_run_document(path: str | Path) -> dict[str, Any]:
    """The JSON of a file written by `--benchmark-save` or `--benchmark-json` with this plugin
    active, or the run a `--dlm-journal` stands for, checked: every problem is a `RunFileError`
    naming the file. Any of them may be compressed (`.xz` or `.gz`), as kept runs are."""
    name = str(path)
    try:
        text = _read_text(Path(path))
    except OSError as error:
        raise RunFileError(f"{name}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    except (lzma.LZMAError, EOFError, UnicodeDecodeError) as error:
        raise RunFileError(f"{name}: cannot be decompressed or decoded ({error})") from None
    if not text.strip():
        raise RunFileError(f"{name}: the file is empty")
    try:
        data = journal_document(text) if is_journal(text) else json.loads(text)
    except json.JSONDecodeError as error:
        raise RunFileError(
            f"{name}: not valid JSON, truncated or corrupt ({error.msg} at line {error.lineno})") from None
    except (KeyError, TypeError, AttributeError) as error:
        raise RunFileError(f"{name}: a journal line is not a point record ({error!r})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise RunFileError(f"{name}: not a pytest-benchmark file (no 'benchmarks' list)")
    schema = data.get(SCHEMA_KEY)
    if not isinstance(schema, int):
        raise RunFileError(f"{name}: not written by pytest-dlmbench (no integer '{SCHEMA_KEY}')")
    if schema > SCHEMA_VERSION:
        raise RunFileError(f"{name}: written with schema {schema}, newer than this pytest-dlmbench reads "
                           f"({SCHEMA_VERSION}); upgrade pytest-dlmbench")
    for index, bench in enumerate(data["benchmarks"] + data.get(FAILED_KEY, [])):
        if not isinstance(bench, dict) or not isinstance(bench.get("fullname"), str) or not isinstance(
                bench.get("extra_info"), dict):
            raise RunFileError(f"{name}: benchmark #{index} lacks 'fullname' or 'extra_info'")
    if not isinstance(data.get("machine_info", {}).get("dlmbench"), dict):
        raise RunFileError(f"{name}: no machine_info.dlmbench section")
    for bench in data["benchmarks"] + data.get(FAILED_KEY, []):
        _check_types(name, bench["fullname"], bench["extra_info"])
    return data


NUMBER_KEYS = (*DIRECTIONS, *LATENCY_EXPONENT)  # what the gate computes with
TEXT_KEYS = ("status", "paradigm", "strategy", "model", "runtime", "fidelity")


def _check_types(name: str, point: str, info: dict[str, Any]) -> None:
    """A wrongly typed key would pass loading and crash the gate after the whole run: refuse it now."""
    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for key in NUMBER_KEYS:
        if info.get(key) is not None and not number(info[key]):
            raise RunFileError(f"{name}: {point}: {key} is {info[key]!r}, not a number or null")
    for key in TEXT_KEYS:
        if info.get(key) is not None and not isinstance(info[key], str):
            raise RunFileError(f"{name}: {point}: {key} is {info[key]!r}, not a string or null")
    rounds = info.get("round_latencies_s")
    if rounds is not None and not (isinstance(rounds, list) and all(number(value) for value in rounds)):
        raise RunFileError(f"{name}: {point}: round_latencies_s is {rounds!r}, not a list of numbers")


def check_writable(folder: str | Path, what: str, create: bool = True) -> None:
    """Fail before anything runs where results could not be saved at the end: a folder that is
    missing (unless `create`), read-only or full. Writes and removes a small file there."""
    path = Path(folder)
    if not path.is_dir() and not create:
        raise RunFileError(f"{what}: folder {path} does not exist")
    try:
        Path(_written_temporary(path, ".dlmbench-check.", " " * 4096)).unlink()
    except OSError as error:
        raise RunFileError(f"{what}: cannot write in {path} ({error.strerror or error})") from None


def failed_entry(test_id: str, extra_info: dict[str, Any]) -> dict[str, Any]:
    """A point that did not finish, as saved under `dlmbench_failed`."""
    return {"fullname": test_id, "name": test_id.rpartition("::")[2], "extra_info": extra_info}


def load_run(path: str | Path) -> SavedRun:
    """A saved run's machine and its points (finished and failed), keyed by test id."""
    data = read_run_document(path)
    points = {bench["fullname"]: bench["extra_info"] for bench in data["benchmarks"] + data.get(FAILED_KEY, [])}
    return SavedRun(str(path), data["machine_info"]["dlmbench"], points, data.get(PARTIAL_KEY),
                    (data.get("commit_info") or {}).get("id"), data.get("datetime"))


def merge_runs(paths: list[str], replace: bool = False,
               allow_mismatch: bool = False) -> tuple[dict[str, Any], list[str]]:
    """One run from a grid measured in several invocations: the first file's machine and commit,
    every file's points. A point in two files is an error unless `replace` (the later file's wins);
    returns the merged document and a line per replaced point."""
    documents = [(str(path), read_run_document(path)) for path in paths]
    first_name, first = documents[0]
    entries: dict[str, tuple[str, str, dict[str, Any]]] = {}  # test id -> (list key, file, entry)
    replaced = []
    for name, data in documents:
        differences = machine_mismatch(first["machine_info"]["dlmbench"], data["machine_info"]["dlmbench"])
        if differences and not allow_mismatch:
            raise RunFileError(f"{name}: machine or software differs from {first_name}: " + "; ".join(differences))
        for key in ("benchmarks", FAILED_KEY):
            for entry in data.get(key, []):
                test = entry["fullname"]
                if test in entries:
                    if not replace:
                        raise RunFileError(
                            f"{name}: {test} is also in {entries[test][1]} (--replace keeps the later file's)")
                    replaced.append(f"{test}: {entries[test][1]} replaced by {name}")
                entries[test] = (key, name, entry)
    merged = {key: value for key, value in first.items() if key not in ("benchmarks", FAILED_KEY)}
    for key in ("benchmarks", FAILED_KEY):
        merged[key] = [entry for kind, _, entry in entries.values() if kind == key]
    shards = [data["machine_info"]["dlmbench"].get("shard") for _, data in documents]
    if any(shards):  # the merged run is the whole selection only when no shard is missing
        merged["machine_info"] = first["machine_info"] | {"dlmbench": first["machine_info"]["dlmbench"] | {
            "shard": ",".join(sorted(set(filter(None, shards)))) if missing_shards(shards) else None}}
    return merged, replaced


def missing_shards(shards: Sequence[str | None]) -> list[str]:
    """The slices I/N (--dlm-shard) of a sharded selection that none of `shards` is."""
    counts = {shard.partition("/")[2] for shard in shards if shard}
    return sorted(f"{index}/{count}" for count in counts for index in range(1, int(count) + 1)
                  if f"{index}/{count}" not in shards)


def machine_mismatch(baseline: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two runs' machines, as 'field: baseline != current' lines."""
    return [f"{field}: {baseline.get(field)!r} != {current.get(field)!r}"
            for field in MATCHED_MACHINE_FIELDS if baseline.get(field) != current.get(field)]


def _written_temporary(folder: Path, prefix: str, text: str) -> str:
    """`text` in a new hidden file in `folder`, on disk (fsynced), with the permissions an ordinary
    new file would get (mkstemp's are 0600); the caller renames or links it into place."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf8") as stream:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and a rename: readers see old or new, never half."""
    target = Path(path)
    temporary = _written_temporary(target.parent, f".{target.name}.", text)
    try:
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def exclusive_write_text(directory: str | Path, make_name: Callable[[int], str], text: str,
                         claim_key: Callable[[str], str] | None = None) -> Path:
    """Write `text` atomically to the first name `make_name(attempt)` that is free.

    The final step is a hard link, which fails instead of overwriting, so concurrent writers
    never replace each other's files. With `claim_key`, a name is also taken when another writer
    already claimed its key (a hidden `.KEY.claim` file created exclusively and kept), so two
    different names can never share a key — e.g. the number of a saved run.
    """
    folder = Path(directory)
    temporary = _written_temporary(folder, ".dlmbench.", text)
    try:
        for attempt in range(10_000):
            name = make_name(attempt)
            if claim_key is not None:
                try:
                    os.close(os.open(folder / f".{claim_key(name)}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
            target = folder / name
            try:
                os.link(temporary, target)
                return target
            except FileExistsError:
                continue
        raise RunFileError(f"{folder}: no free file name after 10000 attempts")
    finally:
        Path(temporary).unlink(missing_ok=True)


def _numbered(folder: Path) -> list[Path]:
    return sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.json"))


def benchmark_compare_file(storage: str, compare: str | bool) -> Path:
    """The saved run `--benchmark-compare[=NUM]` selects in pytest-benchmark's file storage (the
    newest, where its glob matches several)."""
    folder = storage_folder(storage)
    if compare is True:  # pytest-benchmark's choice: the newest numbered run
        candidates = _numbered(folder)
    else:  # and its glob: [MACHINE/]PREFIX, matched at the start of the name
        machine, _, prefix = str(compare).rpartition("/")
        pattern = prefix.rstrip("*") + "*.json"
        candidates = sorted(path for path in (folder.parent.glob(machine) if machine else [folder])
                            for path in path.glob(pattern))
    if not candidates:
        raise RunFileError(f"{folder}: no saved run matches --benchmark-compare={compare}")
    return candidates[-1]


def storage_folder(storage: str) -> Path:
    """This machine's folder of pytest-benchmark's file storage (`--benchmark-storage`)."""
    return Path(storage.removeprefix("file://")) / machine_id()


def install_exclusive_save() -> None:
    """Make pytest-benchmark's --benchmark-save crash-safe and concurrency-safe.

    Its own save opens the final file and writes into it, and picks the next number before
    writing, so a killed run leaves a truncated newest file (which --benchmark-compare would pick)
    and two concurrent runs can pick the same number. This writes a temporary file, claims the
    first free number exclusively, and hard-links the file to it.
    """
    replace_file_save(save_exclusively)


def save_exclusively(folder: Path, document: dict[str, Any], name: str) -> Path:
    """Saves `document` as the next numbered run NAME in `folder`; the path written."""
    existing = _numbered(folder)
    first = int(existing[-1].name[:4]) + 1 if existing else 1
    text = dumps(document, ensure_ascii=True, indent=4)
    if document.get(PARTIAL_KEY):  # never the newest numbered run, which compare would pick
        return exclusive_write_text(folder, lambda attempt: f"{PARTIAL_PREFIX}{first + attempt:04}_{name}.json", text)
    return exclusive_write_text(folder, lambda attempt: f"{first + attempt:04}_{name}.json", text,
                                claim_key=lambda claimed: claimed[:4])
