"""Masked diffusion (LLaDA), with Fast-dLLM's caching and parallel-decoding strategies.

The answer starts as `gen_len` mask tokens, split into semi-autoregressive blocks decoded left
to right; each forward scores the masked positions of the current block by the softmax
probability of their argmax and commits some of them (the acceptance rule decides how many).

- baseline: every step is one bidirectional forward over prompt + answer; the step budget is
  split evenly over the blocks and LLaDA's linear schedule sets the commits per step.
- prefix_cache: the block's first step is a full forward that also fills a KV cache; later
  steps forward only the block and everything after it, against the cached prefix.
- dual_cache: as prefix_cache, but the suffix after the block is cached too (its KV goes stale
  within the block and is refreshed at the next block), so later steps forward only the block.
- parallel / dual_cache+parallel: commit every masked position above the confidence threshold
  (or a simulated tokens-per-forward target), at least one; the block repeats until every row
  of the batch is done (rows already done are forwarded too, as published).

At the `reference` fidelity every forward computes logits at all its positions and scores them
in float64, as Fast-dLLM's llada/generate.py does (scoring.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.core import DEFAULT_FIDELITY
from pytest_dlmbench.memory_model import Phase, parameter_count
from pytest_dlmbench.paradigms.acceptance import Acceptance, Schedule, commit, unfinished
from pytest_dlmbench.paradigms.base import (
    DecodeError,
    DecodeOptions,
    ForwardLimitReached,
    ForwardLog,
    GenerationResult,
    labels,
    parallel_acceptance,
    register,
    validate_lengths,
)
from pytest_dlmbench.paradigms.scoring import Scoring, lean

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.models import ModelSpec
    from pytest_dlmbench.runtimes import Runtime

CACHES = ("none", "prefix", "dual")


@register
@dataclass(frozen=True)
class MaskedDiffusionDecoder:
    """LLaDA low-confidence remasking, greedy; NFE = steps for the scheduled strategies."""

    name: ClassVar[str] = "dlm"
    strategies: ClassVar[tuple[str, ...]] = ("baseline", "prefix_cache", "dual_cache", "parallel",
                                             "dual_cache+parallel")
    paper_equation: ClassVar[str] = "eq. 13"  # paper_arithmetic_intensity's closed form
    block_len: int = 32
    steps: int | None = None  # None: one step per generated token
    cache: str = "none"  # one of CACHES
    parallel: Acceptance | None = None  # None: LLaDA's fixed schedule
    refresh_every_step: bool = False
    scoring: Scoring = field(default_factory=lean)
    seed: int = 0  # sampling noise, with a temperature

    @classmethod
    def from_options(cls, options: DecodeOptions, strategy: str = "baseline",
                     fidelity: str = DEFAULT_FIDELITY) -> MaskedDiffusionDecoder:
        cache = {"prefix_cache": "prefix", "dual_cache": "dual", "dual_cache+parallel": "dual"}.get(strategy, "none")
        parallel = parallel_acceptance(options) if strategy.endswith("parallel") else None
        scoring = (Scoring("reference", all_logits=True, softmax_dtype="float64", softmax_all=True,
                           temperature=options.temperature) if fidelity == "reference" else lean(options.temperature))
        return cls(block_len=options.block_len, steps=options.steps, cache=cache, parallel=parallel,
                   refresh_every_step=options.refresh_every_step, scoring=scoring, seed=options.seed)

    def total_steps(self, gen_len: int) -> int:
        return self.steps if self.steps is not None else gen_len

    def acceptance(self, gen_len: int) -> Acceptance:
        return self.parallel or Schedule(self.total_steps(gen_len) // (gen_len // self.block_len))

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, Any]:
        steps = None if self.parallel else self.total_steps(gen_len)
        return labels(self.acceptance(gen_len), block_size=self.block_len, steps=steps)

    def paper_arithmetic_intensity(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch: int) -> float | None:
        if self.cache != "none":  # the closed form describes the uncached forward only
            return None
        # eq. 13: 2 B n_l (2 L d^2 + a^2 L d^2 + L^2 d) / (N + B n_l d L), a = FFN / d
        n, layers, d, length = parameter_count(spec), spec.num_layers, spec.hidden_size, prompt_len + gen_len
        alpha = spec.active_intermediate_size / d
        return 2 * batch * layers * (2 * length * d * d + alpha**2 * length * d * d + length**2 * d) / (
            n + batch * layers * d * length)

    def memory_phases(self, spec: ModelSpec, prompt_len: int, gen_len: int) -> list[Phase]:
        # every step is a full forward; with a cache, the block's first one also fills a new cache
        # with every position's KV (the later steps' forwards are smaller)
        total = prompt_len + gen_len
        logits = self.scoring.logit_rows(total, self.block_len)
        return [Phase(total if self.cache != "none" else 0, total, logits, cache_grows=False,
                      softmax_positions=logits if self.scoring.softmax_all else self.block_len,
                      scoring_bytes=self.scoring.scoring_bytes())]

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None:
        validate_lengths(spec, prompt_len, gen_len, batch_size)
        if spec.mask_token_id is None:
            raise DecodeError(f"model {spec.name} has no mask token; masked diffusion needs one")
        if self.block_len <= 0 or gen_len % self.block_len:
            raise DecodeError(f"gen_len={gen_len} must be a positive multiple of block_len={self.block_len}")
        blocks, steps = gen_len // self.block_len, self.total_steps(gen_len)
        if not 0 < steps <= gen_len or steps % blocks:
            raise DecodeError(
                f"steps={steps} must be a multiple of the number of blocks ({blocks}) and at most gen_len={gen_len}"
            )

    def generate(
        self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog
    ) -> GenerationResult:
        import torch

        batch, prompt_len = prompt_ids.shape
        self.validate(spec, prompt_len, gen_len, batch)
        mask_id, total = spec.mask_token_id, prompt_len + gen_len
        assert mask_id is not None  # validate checked it
        answer = torch.full((batch, gen_len), mask_id, dtype=torch.long, device=prompt_ids.device)
        x = torch.cat([prompt_ids, answer], dim=1)  # (batch, prompt_len + gen_len)
        acceptance = self.acceptance(gen_len)
        block_rows = torch.arange(self.block_len, device=x.device)
        # shifted logits (Dream): position p is predicted at p - 1; a span forward's first position,
        # whose predecessor it does not compute, takes its own logit, as Fast-dLLM's Dream code does
        shift = 1 if spec.shifted_logits else 0
        span_rows = (block_rows - shift).clamp(min=0)
        noise = torch.Generator(x.device).manual_seed(self.seed) if self.scoring.temperature else None
        forward = self.scoring.forward

        for span, start in enumerate(range(prompt_len, total, self.block_len)):
            end = start + self.block_len
            counts = acceptance.counts(self.block_len, span, batch)
            steps = acceptance.steps(self.block_len, span, batch)  # None: the confidences decide
            step = 0
            while unfinished(step, steps, x[:, start:end], mask_id):
                if self.cache == "none":
                    with log.forward("step", total, total, self.scoring.logit_rows(total, self.block_len)):
                        # bidirectional over everything
                        logits, rows = forward(runtime, x, 0, block_rows + start - shift)
                if self.cache != "none" and (step == 0 or self.refresh_every_step):
                    cache = runtime.new_cache(batch, total)
                    with log.forward("refresh", total, total, self.scoring.logit_rows(total, self.block_len),
                                     kv_written=total):  # also fills the cache
                        logits, rows = forward(runtime, x, 0, block_rows + start - shift, cache, keep=True)
                    if self.cache == "prefix":
                        cache.truncate(start)  # keep positions before the block
                    else:
                        cache.drop(start, end)  # keep prefix and suffix
                if self.cache != "none" and step > 0:
                    span_end = total if self.cache == "prefix" else end  # prefix: the block and all after it
                    with log.forward("step", span_end - start, total,
                                     self.scoring.logit_rows(span_end - start, self.block_len),
                                     kv_written=span_end - start, in_place=self.cache == "dual"):  # the block's slots
                        logits, rows = forward(runtime, x[:, start:span_end], start, span_rows, cache)
                x[:, start:end], committed = commit(x[:, start:end], logits, rows, mask_id, next(counts),
                                                    acceptance, self.scoring, noise)
                log.committed(span, committed, self.scoring.softmax_rows(logits.shape[1], self.block_len),
                              self.scoring.traffic_bytes(logits.element_size()))
                step += 1
        return log.result(x[:, prompt_len:])

    def fixed_shapes(self, spec: ModelSpec, gen_len: int) -> bool:
        return self.acceptance(gen_len).steps(self.block_len, 0, 1) is not None

    def probe(self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog) -> None:
        """Every step has the same shapes (with a cache: the same refresh-then-step pattern per
        block), so the first three forwards reach the peak."""
        log.limit = log.nfe + 3
        with contextlib.suppress(ForwardLimitReached):
            self.generate(runtime, spec, prompt_ids, gen_len, log)
