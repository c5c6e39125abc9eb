"""Shared test helpers: tiny models and simple reference decoders written independently."""

from __future__ import annotations

from typing import Any

import torch

from pytest_dlmbench.models import ModelSpec, build_model, get_spec
from pytest_dlmbench.paradigms import ForwardLog
from pytest_dlmbench.runtimes import Runtime, make_runtime
from pytest_dlmbench.timing import RegionTimer

CPU = torch.device("cpu")


def tiny(name: str, seed: int = 0) -> tuple[ModelSpec, Any]:
    spec = get_spec(name)
    return spec, build_model(spec, CPU, torch.float32, seed=seed)


def on(model: Any, runtime: str = "eager") -> Runtime:
    """`model` under `runtime` (transformers' eager forwards unless a test asks for another)."""
    return make_runtime(runtime, model)


def new_log() -> ForwardLog:
    return ForwardLog(RegionTimer(CPU))


def prompt(spec: ModelSpec, batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.prompt_vocab_limit, (batch, length), generator=generator)


class Recorder:
    """Stands in for a model and keeps a copy of every input_ids it is called with."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inputs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.inputs.append(input_ids.clone())
        return self.model(input_ids, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def reference_llada(model: Any, prompt_ids: torch.Tensor, gen_len: int, block_len: int, steps: int,
                    mask_id: int, shifted: bool = False) -> torch.Tensor:
    """LLaDA's sampler written literally: full logits every step, per-row top-k, float64 softmax;
    `shifted`: Dream's, whose logits at p predict p + 1 (shifted right, the first kept)."""
    batch, prompt_len = prompt_ids.shape
    x = torch.cat([prompt_ids, torch.full((batch, gen_len), mask_id)], dim=1)
    blocks = gen_len // block_len
    steps_per_block = steps // blocks
    for b in range(blocks):
        start, end = prompt_len + b * block_len, prompt_len + (b + 1) * block_len
        masked_in_block = (x[:, start:end] == mask_id).sum(dim=1)
        base, remainder = masked_in_block // steps_per_block, masked_in_block % steps_per_block
        for i in range(steps_per_block):
            mask_index = x == mask_id
            logits = model(x).logits.double()
            if shifted:
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            logits[..., mask_id] = -float("inf")
            p = torch.softmax(logits, dim=-1)
            x0 = logits.argmax(dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None])[..., 0]
            x0_p[:, end:] = -float("inf")
            confidence = torch.where(mask_index, x0_p, -float("inf"))
            for row in range(batch):
                k = int(base[row] + (1 if i < remainder[row] else 0))
                chosen = confidence[row].topk(k).indices
                x[row, chosen] = x0[row, chosen]
    return x[:, prompt_len:]


def block_causal(length: int, block_size: int) -> torch.Tensor:
    q = torch.arange(length)[:, None] // block_size
    k = torch.arange(length)[None, :] // block_size
    return (q >= k)[None, None]


def reference_block_diffusion(model: Any, prompt_ids: torch.Tensor, gen_len: int, block_size: int,
                              subblock_size: int, mask_id: int, threshold: float = 1.0,
                              pad_last_block: bool = False) -> torch.Tensor:
    """Block diffusion without any cache: every forward recomputes the whole sequence so far;
    `pad_last_block` decodes the last block whole, past gen_len."""
    batch, prompt_len = prompt_ids.shape
    total = prompt_len + gen_len
    if pad_last_block:
        total = -(-total // block_size) * block_size
    x = torch.cat([prompt_ids, torch.full((batch, total - prompt_len), mask_id)], dim=1)

    def predict(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.clone()  # Fast-dLLM v2 scores in the logits' dtype
        logits[..., mask_id] = -float("inf")
        p = torch.softmax(logits, dim=-1)
        return p.max(dim=-1)

    first = prompt_len // block_size * block_size
    for start in range(first, total, block_size):
        end = min(start + block_size, total)
        if start >= prompt_len:  # first token of a block: the last logit of everything before it
            logits = model(x[:, :start], attention_mask=block_causal(start, block_size)).logits[:, -1]
            x[:, start] = predict(logits)[1]
        for sub_start in range(start, end, subblock_size):
            sub_end = min(sub_start + subblock_size, end)
            while (x[:, sub_start:sub_end] == mask_id).any():
                logits = model(x[:, :end], attention_mask=block_causal(end, block_size)).logits
                for row in range(batch):
                    best, best_p = None, -1.0
                    for pos in range(sub_start, sub_end):
                        if x[row, pos] != mask_id:
                            continue
                        source = max(pos - 1, start)  # token shift
                        confidence, token = predict(logits[row, source])
                        if confidence > best_p:
                            best, best_p = (pos, token), float(confidence)
                        if confidence > threshold:
                            x[row, pos] = token
                    if best is not None:
                        x[row, best[0]] = best[1]
    return x[:, prompt_len : prompt_len + gen_len]
