"""Block diffusion (Fast-dLLM v2): KV-cached blocks, bidirectional attention inside each block.

Blocks sit at absolute multiples of the block size. The block-aligned part of the prompt is
prefilled under the block-causal mask (a query block sees key blocks at or before it). Each
block is then denoised sub-block by sub-block: a forward over the whole block against the cached
prefix (whose own KV is dropped again), logits shifted by one token, and the masked positions of
the sub-block committed by the acceptance rule. A finished block is forwarded once more to
append its KV; that forward's last logit is the next block's first token.

- baseline: threshold 1.0, so exactly one token per step.
- parallel: every masked position of the sub-block above the threshold (0.9), plus the most
  confident one (or a simulated tokens-per-forward target with random weights).
- parallel+subblock_cache: a step forwards the whole block and keeps its KV (a refresh) while any
  row still has the sub-block's first position masked (its logit comes from the position before,
  outside the sub-block); after that, steps forward only the sub-block against prefix + block KV,
  the rest of the block's KV going stale, as Fast-dLLM v2 does.

At the `reference` fidelity every forward computes logits at all its positions (the prefill and
the block's commit forward too), the sub-block is scored in the logits' dtype, and the last block
is decoded whole even where it reaches past gen_len, as Fast-dLLM v2 does (scoring.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pytest_dlmbench.core import DEFAULT_FIDELITY
from pytest_dlmbench.memory_model import Phase, parameter_count
from pytest_dlmbench.paradigms.acceptance import Acceptance, Threshold, commit, unfinished
from pytest_dlmbench.paradigms.base import (
    DecodeError,
    DecodeOptions,
    ForwardLog,
    GenerationResult,
    labels,
    parallel_acceptance,
    register,
    validate_lengths,
)
from pytest_dlmbench.paradigms.scoring import Scoring, greedy_token, lean

if TYPE_CHECKING:
    import torch

    from pytest_dlmbench.models import ModelSpec
    from pytest_dlmbench.runtimes import Runtime


def block_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """(mask token, block size, sub-block size) of a block-diffusion model."""
    if spec.mask_token_id is None or spec.block_size is None or spec.subblock_size is None:
        raise DecodeError(f"model {spec.name} is not a block-diffusion model (needs mask token and block sizes)")
    return spec.mask_token_id, spec.block_size, spec.subblock_size


@register
@dataclass(frozen=True)
class BlockDiffusionDecoder:
    """Fast-dLLM v2 decoding; with threshold 1.0 exactly one token is committed per step."""

    name: ClassVar[str] = "block"
    strategies: ClassVar[tuple[str, ...]] = ("baseline", "parallel", "parallel+subblock_cache")
    paper_equation: ClassVar[str] = "eq. 12"  # paper_arithmetic_intensity's closed form
    acceptance: Acceptance = field(default_factory=lambda: Threshold(1.0))
    subblock_cache: bool = False
    subblock_len: int | None = None  # None: the model's sub-block size
    refresh_every_step: bool = False
    scoring: Scoring = field(default_factory=lean)
    seed: int = 0  # sampling noise, with a temperature

    @classmethod
    def from_options(cls, options: DecodeOptions, strategy: str = "baseline",
                     fidelity: str = DEFAULT_FIDELITY) -> BlockDiffusionDecoder:
        acceptance = Threshold(1.0) if strategy == "baseline" else parallel_acceptance(options)
        scoring = (Scoring("reference", all_logits=True, softmax_dtype="logits", pad_last_block=True,
                           temperature=options.temperature) if fidelity == "reference" else lean(options.temperature))
        return cls(acceptance=acceptance, subblock_cache=strategy.endswith("subblock_cache"),
                   subblock_len=options.subblock_len, refresh_every_step=options.refresh_every_step,
                   scoring=scoring, seed=options.seed)

    def decoded_length(self, spec: ModelSpec, prompt_len: int, gen_len: int) -> int:
        """Positions the generation fills: prompt + gen_len, up to a whole block when padded."""
        total, block = prompt_len + gen_len, block_shape(spec)[1]
        return -(-total // block) * block if self.scoring.pad_last_block else total

    def describe(self, spec: ModelSpec, gen_len: int) -> dict[str, Any]:
        described = labels(self.acceptance, block_size=spec.block_size, steps=None)
        if isinstance(self.acceptance, Threshold) and self.acceptance.threshold >= 1.0:
            described["acceptance"] = "fixed"  # one token per step, whatever the weights
        return described

    def paper_arithmetic_intensity(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch: int) -> float | None:
        if self.subblock_cache:  # the closed form describes the uncached forward only
            return None
        # eq. 12: 2 B n_l (2 G d^2 + a^2 G d^2 + L G d) / (N + 2 B n_l d L + B n_l d G)
        n, layers, d, length, g = (parameter_count(spec), spec.num_layers, spec.hidden_size, prompt_len + gen_len,
                                   block_shape(spec)[1])
        alpha = spec.active_intermediate_size / d
        return 2 * batch * layers * (2 * g * d * d + alpha**2 * g * d * d + length * g * d) / (
            n + 2 * batch * layers * d * length + batch * layers * d * g)

    def memory_phases(self, spec: ModelSpec, prompt_len: int, gen_len: int) -> list[Phase]:
        # the block-aligned prefill, then a block forward on the (almost) full cache
        _, block, model_subblock = block_shape(spec)
        aligned = prompt_len // block * block
        subblock = self.subblock_len or model_subblock
        return [Phase(aligned, aligned, self.scoring.logit_rows(aligned, 1), cache_grows=False, softmax_positions=1),
                Phase(self.decoded_length(spec, prompt_len, gen_len), block,
                      self.scoring.logit_rows(block, subblock), softmax_positions=subblock,
                      scoring_bytes=self.scoring.scoring_bytes())]

    def validate(self, spec: ModelSpec, prompt_len: int, gen_len: int, batch_size: int) -> None:
        validate_lengths(spec, prompt_len, gen_len, batch_size)
        _, block, model_subblock = block_shape(spec)
        if self.decoded_length(spec, prompt_len, gen_len) > spec.max_positions:
            raise DecodeError(f"the last block, decoded whole, reaches past {spec.name}'s {spec.max_positions} "
                              "positions; use --dlm-fidelity=lean or a shorter prompt + gen")
        subblock = self.subblock_len or model_subblock
        if block % subblock:
            raise DecodeError(f"subblock_len={subblock} must divide {spec.name}'s block size {block}")

    def fixed_shapes(self, spec: ModelSpec, gen_len: int) -> bool:
        # the sub-block cache refreshes while the sub-block's first position is masked: the logits decide
        return not self.subblock_cache and self.acceptance.steps(block_shape(spec)[2], 0, 1) is not None

    def probe(self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog) -> None:
        """The prefill, then the last two blocks on a cache padded to the length they start at, two
        steps per sub-block (the first and a later one; the rest repeat their shapes)."""
        self.generate(runtime, spec, prompt_ids, gen_len, log, resume_blocks=2)

    def generate(
        self, runtime: Runtime, spec: ModelSpec, prompt_ids: torch.Tensor, gen_len: int, log: ForwardLog,
        resume_blocks: int | None = None,
    ) -> GenerationResult:
        """`resume_blocks=n` decodes only the last n blocks, on a zero-padded cache, two steps per
        sub-block (memory probes)."""
        import torch

        batch, prompt_len = prompt_ids.shape
        self.validate(spec, prompt_len, gen_len, batch)
        mask_id, block_size, model_subblock = block_shape(spec)
        subblock_size = self.subblock_len or model_subblock
        rule, scoring = self.acceptance, self.scoring
        total = self.decoded_length(spec, prompt_len, gen_len)
        answer = torch.full((batch, total - prompt_len), mask_id, dtype=torch.long, device=prompt_ids.device)
        x = torch.cat([prompt_ids, answer], dim=1)  # (batch, total)
        noise = torch.Generator(x.device).manual_seed(self.seed) if scoring.temperature else None
        cache = runtime.new_cache(batch, total)
        aligned = prompt_len // block_size * block_size
        first_token = None  # (batch,): the prediction for the next block's first position
        if aligned:
            with log.forward("prefill", aligned, aligned, scoring.logit_rows(aligned, 1), "block_causal", aligned):
                logits, _ = scoring.forward(runtime, x[:, :aligned], 0, 1, cache, keep=True, attention="block_causal",
                                            block_size=block_size)
            first_token = greedy_token(logits, mask_id)
        starts = list(range(aligned, total, block_size))
        if resume_blocks is not None and len(starts) > resume_blocks:
            starts = starts[-resume_blocks:]
            cache.extend(starts[0])
            if first_token is None:  # nothing was prefilled: any prediction will do for a probe
                first_token = torch.zeros(batch, dtype=torch.long, device=x.device)
        span = 0
        for start in starts:
            end = min(start + block_size, total)
            if start >= prompt_len:  # token shift: the previous forward's last logit predicts it
                assert first_token is not None  # a block past the prompt follows a prefill or a commit
                x[:, start] = first_token
            for sub_start in range(start, end, subblock_size):
                sub = slice(sub_start, min(sub_start + subblock_size, end))
                # logits for position p come from p - 1 (position `start` is never masked here)
                shifted = (torch.arange(sub.start, sub.stop, device=x.device) - 1).clamp(min=start)
                counts = self.acceptance.counts(sub.stop - sub.start, span, batch)
                # masked: the sub-block's answer positions, but a block's first (the token shift fills it)
                masked = max(0, sub.stop - max(sub.start, prompt_len) - (sub.start == start >= prompt_len))
                steps = self.acceptance.steps(masked, span, batch)  # None: the confidences decide
                step = 0
                while unfinished(step, steps, x[:, sub], mask_id):
                    if resume_blocks is not None and step == 2:  # a probe: later steps repeat these shapes
                        x[:, sub] = x[:, sub].masked_fill(x[:, sub] == mask_id, 0)
                        break
                    # refresh while the sub-block's first position, whose logit comes from outside it, is masked
                    if (not self.subblock_cache or step == 0 or self.refresh_every_step
                            or bool((x[:, sub.start] == mask_id).any())):
                        cache.truncate(start)
                        kind = "step" if not self.subblock_cache or step == 0 else "refresh"
                        with log.forward(kind, end - start, end, scoring.logit_rows(end - start, sub.stop - sub.start),
                                         kv_written=end - start):
                            # (batch, block) against the cached prefix, no mask
                            logits, rows = scoring.forward(runtime, x[:, start:end], start, shifted - start, cache,
                                                           keep=self.subblock_cache)
                        if self.subblock_cache:
                            cache.drop(sub.start, sub.stop)  # keep prefix + the rest of the block
                    else:  # only the sub-block; its first position (committed) takes its own logit
                        with log.forward("step", sub.stop - sub.start, end, sub.stop - sub.start,
                                         kv_written=sub.stop - sub.start, in_place=True):  # the sub-block's slots
                            logits, rows = scoring.forward(runtime, x[:, sub], sub.start,
                                                           (shifted - sub.start).clamp(min=0), cache)
                    x[:, sub], committed = commit(x[:, sub], logits, rows, mask_id, next(counts), rule, scoring,
                                                  noise)
                    log.committed(span, committed, scoring.softmax_rows(logits.shape[1], sub.stop - sub.start),
                                  scoring.traffic_bytes(logits.element_size()))
                    step += 1
                span += 1
            cache.truncate(start)
            if end < total:
                with log.forward("commit", end - start, end, scoring.logit_rows(end - start, 1),
                                 kv_written=end - start):  # append the block's KV
                    logits, _ = scoring.forward(runtime, x[:, start:end], start, 1, cache, keep=True)
                first_token = greedy_token(logits, mask_id)
        return log.result(x[:, prompt_len : prompt_len + gen_len], decoded_len=total - prompt_len)
