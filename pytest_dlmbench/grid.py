"""The benchmark grids as data, and the selection of points from them.

A grid sweeps the generation length at batch 1 and the batch size at one generation length,
for every prompt length, as the seed papers do. Point ids are stable: comparisons match on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_dlmbench.core import DEFAULT_FIDELITY, DEFAULT_RUNTIME, BenchPoint
from pytest_dlmbench.models import ModelError, get_spec
from pytest_dlmbench.paradigms.base import strategies_of, supported_runtimes

if TYPE_CHECKING:
    from pytest_dlmbench.core import Settings


@dataclass(frozen=True)
class Grid:
    name: str
    models: tuple[str, ...]  # one model per paradigm, in run order
    prompt_lens: tuple[int, ...]
    gen_lens: tuple[int, ...]  # swept at batch 1
    batch_sizes: tuple[int, ...]  # swept at `batch_gen_len`
    batch_gen_len: int
    strategies: tuple[str, ...] | None = ("baseline",)  # where the paradigm has them (None: every one, live)

    def shapes(self) -> list[tuple[int, int, int]]:
        """(prompt_len, gen_len, batch_size) of both sweeps, without duplicates."""
        shapes = {(p, g, 1) for p in self.prompt_lens for g in self.gen_lens}
        shapes |= {(p, self.batch_gen_len, b) for p in self.prompt_lens for b in self.batch_sizes}
        return sorted(shapes)


GRIDS: dict[str, Grid] = {
    grid.name: grid
    for grid in (
        Grid("smoke", ("tiny-ar", "tiny-dlm", "tiny-block"), (16, 40), (32, 64), (1, 4), batch_gen_len=32,
             strategies=None),
        Grid("standard", ("llama-3.1-8b", "llada-8b", "fast-dllm-v2-7b"), (40, 920), (64, 256, 1024), (1, 4, 16),
             batch_gen_len=256),
        # The seed paper measured dual cache and parallel decoding for LLaDA, parallel for block diffusion.
        Grid("paper", ("llama-3.1-8b", "llada-8b", "fast-dllm-v2-7b"), (40, 920), (64, 128, 256, 512, 1024, 2048),
             (1, 2, 4, 8, 16, 20, 24, 32, 64), batch_gen_len=256, strategies=("baseline", "dual_cache", "parallel")),
    )
}


def _keep(value: int, allowed: tuple[int, ...] | None) -> bool:
    return allowed is None or value in allowed


def select_points(
    grid: Grid,
    paradigms: Iterable[str] | None = None,
    models: Iterable[str] | None = None,
    prompt_lens: tuple[int, ...] | None = None,
    gen_lens: tuple[int, ...] | None = None,
    batch_sizes: tuple[int, ...] | None = None,
    strategies: Iterable[str] | None = None,
    runtimes: tuple[str, ...] = (DEFAULT_RUNTIME,),
    fidelities: tuple[str, ...] = (DEFAULT_FIDELITY,),
) -> list[BenchPoint]:
    """The grid's points for the chosen models (default: the grid's), strategies (default: the
    grid's), runtimes, fidelities and filters, model by model, each shape's baseline before its
    other strategies, each point under every runtime and fidelity in a row."""
    chosen_models = tuple(models) if models is not None else grid.models
    chosen_strategies = tuple(strategies) if strategies is not None else grid.strategies
    wanted_paradigms = set(paradigms) if paradigms is not None else None
    points = []
    for model in chosen_models:
        for paradigm in get_spec(model).paradigms:
            if wanted_paradigms is not None and paradigm not in wanted_paradigms:
                continue
            for prompt_len, gen_len, batch_size in grid.shapes():
                if _keep(prompt_len, prompt_lens) and _keep(gen_len, gen_lens) and _keep(batch_size, batch_sizes):
                    points += [BenchPoint(paradigm, model, prompt_len, gen_len, batch_size, strategy, runtime,
                                          fidelity)
                               for strategy in strategies_of(paradigm)
                               if chosen_strategies is None or strategy in chosen_strategies
                               for runtime in runtimes for fidelity in fidelities]
    return points


class SelectionError(ValueError):
    """The options select no runnable point."""


def deal(points: list[BenchPoint], hands: int) -> list[int]:
    """The hand (0 .. hands-1) each of `points` goes to, dealt round-robin in order, the runtimes of
    one point together (their token agreement is computed where both run)."""
    unit = {key: number for number, key in enumerate(dict.fromkeys(point.runtime_key for point in points))}
    return [unit[point.runtime_key] % hands for point in points]


def _shard(points: list[BenchPoint], shard: tuple[int, int] | None) -> list[BenchPoint]:
    """This run's slice (--dlm-shard=I/N): the same for every run of the same selection."""
    if shard is None:
        return points
    index, count = shard
    mine = [point for point, hand in zip(points, deal(points, count)) if hand == index - 1]
    if not mine:
        raise SelectionError(f"--dlm-shard={index}/{count} selects no point: the selection has {len(points)} "
                             f"point(s) to deal {count} ways")
    return mine


def points_for(settings: Settings) -> list[BenchPoint]:
    """The resolved settings' points (this shard's), each checked by its paradigm before anything runs."""
    return _shard(_checked_points(settings), settings.shard)


def _checked_points(settings: Settings) -> list[BenchPoint]:
    from pytest_dlmbench.paradigms import DecodeError, make_paradigm

    grid = GRIDS[settings.grid]
    points = select_points(grid, settings.paradigms, settings.models, settings.prompt_lens, settings.gen_lens,
                           settings.batch_sizes, settings.strategies, settings.runtimes, settings.fidelities)
    if not points:
        raise SelectionError(
            f"the --dlm-* filters select no point of the {grid.name} grid (models {', '.join(grid.models)}; "
            f"prompts {grid.prompt_lens}; gen {grid.gen_lens} at batch 1; batch {grid.batch_sizes} at gen "
            f"{grid.batch_gen_len}; strategies {', '.join(grid.strategies or ('every one',))})"
        )
    runtimes_checked: set[tuple[str, str, str]] = set()
    for point in points:
        try:
            make_paradigm(point.paradigm, settings.decode, point.strategy, point.fidelity).validate(
                get_spec(point.model), point.prompt_len, point.gen_len, point.batch_size
            )
            if (point.paradigm, point.model, point.runtime) not in runtimes_checked:
                check_runtime(point)
                runtimes_checked.add((point.paradigm, point.model, point.runtime))
        except (DecodeError, ModelError, ValueError) as error:
            raise SelectionError(f"{point.id}: {error}") from None
        if settings.prompts == "gsm8k" and settings.checkpoint(point.model) is None:
            raise SelectionError(
                f"--dlm-prompts=gsm8k needs {point.model}'s tokenizer: pass --dlm-checkpoint {point.model}=PATH"
            )
    return points


def check_runtime(point: BenchPoint) -> None:
    """Refuse a point whose runtime is unknown, not one its paradigm runs on, or refuses its model's
    architecture (`check_model` on the runtime class), before anything is built."""
    from pytest_dlmbench.runtimes import RUNTIMES

    if point.runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {point.runtime!r}; known runtimes: {', '.join(RUNTIMES)}")
    declared = supported_runtimes(point.paradigm)
    if declared is not None and point.runtime not in declared:
        raise ValueError(f"paradigm {point.paradigm} runs on the runtimes {', '.join(declared)}, not {point.runtime}")
    check_model = getattr(RUNTIMES[point.runtime], "check_model", None)
    if check_model is not None:
        check_model(get_spec(point.model).config())


def boundary_points_for(settings: Settings) -> list[BenchPoint]:
    """One batch-free point (batch_size 1) per paradigm, model, strategy, prompt and generation
    length of the selection; generation lengths default to the grid's batch-sweep length."""
    gen_lens = settings.gen_lens or (GRIDS[settings.grid].batch_gen_len,)
    selection = _checked_points(dataclasses.replace(settings, gen_lens=gen_lens, batch_sizes=None))
    return _shard(list(dict.fromkeys(dataclasses.replace(point, batch_size=1) for point in selection)), settings.shard)
