"""Prompt token ids of an exact length: seeded synthetic ids, or k-shot GSM8K prompts.

Speed depends on the prompt's length, not its content, so synthetic ids are the default; GSM8K
prompts exist so that real checkpoints can be run on the seed papers' real inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class PromptError(ValueError):
    """Prompts of the requested kind cannot be made here."""


def synthetic_prompts(vocab_limit: int, batch_size: int, prompt_len: int, seed: int,
                      device: torch.device) -> torch.Tensor:
    """(batch, prompt_len) ids in [0, vocab_limit), seeded by the seed and the shape."""
    import torch

    generator = torch.Generator().manual_seed(seed * 1_000_003 + prompt_len * 1_009 + batch_size)
    return torch.randint(0, vocab_limit, (batch_size, prompt_len), generator=generator).to(device)


OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@contextmanager
def _offline() -> Iterator[Any]:
    """`datasets`, imported offline: its flags are read from the environment when it is first
    imported, so they are set before that and, for an import made earlier, on its config too."""
    saved = {key: os.environ.get(key) for key in OFFLINE_VARIABLES}
    os.environ.update(dict.fromkeys(OFFLINE_VARIABLES, "1"))
    import datasets
    import huggingface_hub.constants

    flags = [(datasets.config, name) for name in OFFLINE_VARIABLES if hasattr(datasets.config, name)]
    flags += [(huggingface_hub.constants, "HF_HUB_OFFLINE")]
    before = [getattr(holder, name) for holder, name in flags]
    for holder, name in flags:
        setattr(holder, name, True)
    try:
        yield datasets
    finally:
        for (holder, name), value in zip(flags, before):
            setattr(holder, name, value)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_LOADED: dict[str | None, tuple[list[dict[str, Any]], list[dict[str, Any]]] | PromptError] = {}


def load_gsm8k(path: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test) records from a local copy: a save_to_disk folder, data files, or the HF cache,
    never the network. Loaded once a process; a failure is remembered, so later points fail at
    once instead of waiting for it again."""
    if path not in _LOADED:
        try:
            _LOADED[path] = _load_gsm8k(path)
        except PromptError as error:
            _LOADED[path] = error
    loaded = _LOADED[path]
    if isinstance(loaded, PromptError):
        raise loaded
    return loaded


def _load_gsm8k(path: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        with _offline() as datasets:
            if path is None:
                data = datasets.load_dataset("openai/gsm8k", "main")
            elif (Path(path) / "dataset_dict.json").exists() or (Path(path) / "state.json").exists():
                data = datasets.load_from_disk(path)
            else:
                data = datasets.load_dataset(path)
    except Exception as error:
        where = f"at {path!r}" if path else "in the local Hugging Face cache (offline)"
        raise PromptError(f"no GSM8K dataset {where}: {error}; pass --dlm-dataset=PATH to a local copy") from None
    if isinstance(data, datasets.Dataset):
        data = datasets.DatasetDict(train=data)
    train = data["train"] if "train" in data else next(iter(data.values()))
    test = data.get("test", train)
    for split in (train, test):
        missing = {"question", "answer"} - set(split.column_names)
        if missing:
            raise PromptError(f"GSM8K data lacks column(s) {sorted(missing)}; has {split.column_names}")
    return list(train), list(test)


def gsm8k_prompts(tokenizer: Any, records: tuple[list[dict[str, Any]], list[dict[str, Any]]], batch_size: int,
                  prompt_len: int, device: torch.device) -> torch.Tensor:
    """(batch, prompt_len) ids: row i asks test question i after as many worked train examples
    as it takes to reach `prompt_len` tokens, keeping the last `prompt_len` (the question stays whole)."""
    import torch

    train, test = records
    rows = []
    for row in range(batch_size):
        question = test[row % len(test)]
        ids = tokenizer.encode(f"Question: {question['question']}\nAnswer:", add_special_tokens=False)
        for shot in train:
            if len(ids) >= prompt_len:
                break
            example = f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n"
            ids = tokenizer.encode(example, add_special_tokens=False) + ids
        if len(ids) < prompt_len:
            raise PromptError(f"GSM8K has too little text for a {prompt_len}-token prompt ({len(ids)} tokens)")
        rows.append(ids[-prompt_len:])
    return torch.tensor(rows, dtype=torch.long, device=device)
