"""Human-readable views of results: the terminal summary table."""

from __future__ import annotations

from collections.abc import Iterable

from tabulate import tabulate

from pytest_dlmbench.metrics import PointMetrics

SUMMARY_HEADERS = ("paradigm", "strategy", "model", "prompt", "gen", "batch", "tok/s", "ms/forward", "NFE", "TPF", "peak MiB", "status")


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def summary_table(results: Iterable[PointMetrics]) -> str:
    """One row per point; peak memory is torch's allocated peak on CUDA and RSS on CPU."""
    rows = [
        (m.paradigm, m.strategy, m.model, m.prompt_len, m.gen_len, m.batch_size, m.tokens_per_s, m.ms_per_forward, m.nfe,
         m.tokens_per_forward, _mib(m.peak_bytes), m.status)
        for m in results
    ]
    return tabulate(rows, headers=SUMMARY_HEADERS, floatfmt=".2f", missingval="-")
