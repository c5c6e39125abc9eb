"""The --dlm-* command-line options, their validation, and the frozen Settings they become.

Option values are checked when pytest parses them (no torch import, so `pytest --help` stays
fast); choices that depend on the machine ("auto" device, dtype and grid) are resolved once,
lazily, by `Settings.resolved()`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.gate import GateError, GateRule
from pytest_dlmbench.grid import GRIDS, STRATEGIES
from pytest_dlmbench.models import MODEL_SPECS
from pytest_dlmbench.paradigms import PARADIGMS, DecodeOptions

if TYPE_CHECKING:
    import pytest
    import torch

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
DEFAULT_ROUNDS = 6  # gate.rounds_to_judge(30): enough to judge the standard grid's 30 points at once
DEFAULT_MAX_ROUNDS = 20
DEFAULT_SIMULATED_TPF = 3.0  # tokens per forward of the parallel strategies on random weights
PROMPT_SOURCES = ("synthetic", "gsm8k")


def _names(kind: str, allowed: dict[str, Any]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        if names == ("all",):
            return tuple(allowed)
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, unknown)) or repr(text)}; allowed: all, {', '.join(allowed)}"
            )
        return names

    return parse


def positive_int(text: str, minimum: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {minimum}")
    return value


def _non_negative_int(text: str) -> int:
    return positive_int(text, minimum=0)


def _int_list(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return tuple(positive_int(part) for part in parts)


def _number(minimum: float, kind: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
        return value

    return parse


def _gate_rule(text: str) -> GateRule:
    try:
        return GateRule.parse(text)
    except GateError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _device(text: str) -> str:
    head, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (head == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; allowed: auto, cpu, cuda, cuda:N")


def _checkpoint(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    if name not in MODEL_SPECS:
        raise argparse.ArgumentTypeError(f"unknown model {name!r} in {text!r}; known models: {', '.join(MODEL_SPECS)}")
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"checkpoint path {path!r} for {name} is not a directory")
    return name, path


def _choice(allowed: tuple[str, ...], kind: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}; allowed: {', '.join(allowed)}")
        return text

    return parse


def add_options(parser: pytest.Parser) -> None:
    """Register the option group (uniform help: what it does, then the default)."""
    group = parser.getgroup("dlmbench", "dlmbench: generation benchmarks for AR, DLM and block-diffusion LMs")
    add = group.addoption
    add("--dlm-grid", type=_choice(("auto", *GRIDS), "grid"), default="auto",
        help="Benchmark grid: smoke (tiny models), standard (7-8B shapes) or paper (the full seed grid). "
        "Default: standard with CUDA, smoke without.")
    add("--dlm-paradigms", type=_names("paradigm", PARADIGMS), default=None,
        help=f"Comma-separated paradigms to run ({', '.join(PARADIGMS)} or all). Default: all.")
    add("--dlm-models", type=_names("model", MODEL_SPECS), default=None,
        help="Comma-separated models to run instead of the grid's, each with the paradigm it was built for "
        f"({', '.join(MODEL_SPECS)}). Default: the grid's models.")
    add("--dlm-prompt", type=_int_list, default=None, help="Only these prompt lengths of the grid. Default: all.")
    add("--dlm-gen", type=_int_list, default=None, help="Only these generation lengths of the grid. Default: all.")
    add("--dlm-batch", type=_int_list, default=None, help="Only these batch sizes of the grid. Default: all.")
    add("--dlm-rounds", type=positive_int, default=DEFAULT_ROUNDS,
        help="Timed rounds per point, never cut by the time budget; the gate needs 6 a side to judge the "
        f"standard grid's 30 points at once. Default: {DEFAULT_ROUNDS}.")
    add("--dlm-max-rounds", type=positive_int, default=DEFAULT_MAX_ROUNDS,
        help="With --dlm-gate: the most rounds a point is measured to when its rounds are too few for the gate "
        f"to decide its verdict. Default: {DEFAULT_MAX_ROUNDS}.")
    add("--dlm-warmup", type=_non_negative_int, default=1, help="Untimed full generations before timing. Default: 1.")
    add("--dlm-max-time", type=_number(1e-9, "a positive number of seconds"), default=60.0,
        help="Per-point time budget in seconds: a point whose timed rounds would take longer warns with their "
        "cost (rounds are never cut); a boundary whose full generation would take longer is saved untimed. "
        "Default: 60.")
    add("--dlm-dtype", type=_choice(("auto", *DTYPES), "dtype"), default="auto",
        help="Weight and activation dtype (bf16, fp16, fp32). Default: bf16 on CUDA, fp32 on CPU.")
    add("--dlm-device", type=_device, default="auto", help="cpu, cuda or cuda:N. Default: cuda if available.")
    add("--dlm-checkpoint", type=_checkpoint, action="append", default=[], metavar="NAME=PATH",
        help="Load MODEL's real weights from a local directory of safetensors files (repeatable). "
        "Default: seeded random weights.")
    add("--dlm-prompts", type=_choice(PROMPT_SOURCES, "prompt source"), default="synthetic",
        help="synthetic (seeded random ids of the exact length) or gsm8k (k-shot GSM8K prompts; needs the "
        "model's --dlm-checkpoint for its tokenizer). Default: synthetic.")
    add("--dlm-dataset", default=None, metavar="PATH",
        help="Local GSM8K copy for --dlm-prompts=gsm8k (save_to_disk folder or data files). "
        "Default: the local Hugging Face cache, offline.")
    add("--dlm-block-len", type=positive_int, default=32,
        help="dlm: semi-autoregressive block length; gen lengths must be multiples of it. Default: 32.")
    add("--dlm-steps", type=positive_int, default=None,
        help="dlm: total denoising steps, a multiple of gen_len / block_len. Default: gen_len (one token per step).")
    add("--dlm-strategies", type=_names("strategy", dict.fromkeys(STRATEGIES)), default=None,
        help=f"Comma-separated strategies, each run where the paradigm has it ({', '.join(STRATEGIES)} or all). "
        "Default: the grid's (smoke: all; standard: baseline; paper: baseline, dual_cache, parallel).")
    add("--dlm-threshold", type=_number(1e-9, "a positive confidence threshold"), default=0.9,
        help="Parallel strategies with real weights: commit masked positions more confident than this. Default: 0.9.")
    add("--dlm-tpf", type=_number(1.0, "a tokens-per-forward target >= 1"), default=None,
        help="Parallel strategies: commit this many of the most confident positions per forward (simulated "
        f"acceptance). Default: {DEFAULT_SIMULATED_TPF} with random weights; real confidences with a checkpoint.")
    add("--dlm-subblock-len", type=positive_int, default=None,
        help="block: sub-block length, a divisor of the block size. Default: the model's (8).")
    add("--dlm-boundary", action="store_true", default=False,
        help="Run the OOM boundary search (benchmarks/test_oom_boundary.py): the largest batch that completes "
        "a full generation, per paradigm, strategy, prompt and gen. Default: off.")
    add("--dlm-max-batch", type=positive_int, default=1024, help="Largest batch the boundary search tries. Default: 1024.")
    add("--dlm-isolate", type=_choice(("auto", "on", "off"), "isolation mode"), default="auto",
        help="Run each boundary probe in a fresh process (on), in this process (off), or on when CUDA is used "
        "(auto). Default: auto.")
    add("--dlm-memory-limit", type=_number(1e-3, "a positive number of GiB"), default=None, metavar="GIB",
        help="Cap usable GPU memory at GIB, to ask where a point would run out of memory on a smaller card. "
        "Default: the whole device.")
    add("--dlm-peak-tflops", type=_number(1e-6, "a positive TFLOP/s"), default=None,
        help="The GPU's peak dense bf16 TFLOP/s for the roofline. Default: the table entry for its name.")
    add("--dlm-peak-gbps", type=_number(1e-6, "a positive GB/s"), default=None,
        help="The GPU's peak memory bandwidth in GB/s for the roofline. Default: the table entry for its name.")
    add("--dlm-measure-ceilings", action="store_true", default=False,
        help="Measure copy bandwidth and a large bf16 matmul on this GPU and use them as the roofs. Default: off.")
    add("--dlm-gate", type=_gate_rule, action="append", default=[], metavar="METRIC:THRESHOLD",
        help="Fail the session when a point regresses against the baseline (repeatable): tokens_per_s:5%%, "
        "latency_s:0.2, max_batch_size:0, my_key:3%%:higher. Default with --dlm-baseline: tokens_per_s:5%%.")
    add("--dlm-baseline", default=None, metavar="PATH",
        help="Baseline run for --dlm-gate. Default: the run --benchmark-compare selects.")
    add("--dlm-allow-mismatch", action="store_true", default=False,
        help="Gate against a baseline from a different GPU or software versions. Default: refuse.")
    add("--dlm-seed", type=_non_negative_int, default=0, help="Seed for random weights and prompts. Default: 0.")
    add("--dlm-journal", default=None, metavar="PATH",
        help="Append each point to PATH (a new file, one JSON line per point) as soon as it ends, so a killed "
        "run keeps what it measured; `dlmbench merge PATH --out RUN.json` makes it a run file. Default: off.")


@dataclass(frozen=True)
class Settings:
    """Every --dlm-* choice, validated; "auto" values stay until `resolved()`."""

    grid: str = "auto"
    paradigms: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    prompt_lens: tuple[int, ...] | None = None
    gen_lens: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] | None = None
    rounds: int = DEFAULT_ROUNDS
    max_rounds: int = DEFAULT_MAX_ROUNDS
    warmup: int = 1
    max_time_s: float = 60.0
    dtype: str = "auto"
    device: str = "auto"
    checkpoints: tuple[tuple[str, str], ...] = ()
    prompts: str = "synthetic"
    dataset: str | None = None
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    strategies: tuple[str, ...] | None = None
    tpf: float | None = None  # None: simulated only where the weights are random
    boundary: bool = False
    max_batch: int = 1024
    isolate: str = "auto"
    memory_limit_gib: float | None = None
    peak_tflops: float | None = None
    peak_gbps: float | None = None
    measure_ceilings: bool = False
    gate: tuple[GateRule, ...] = ()
    baseline: str | None = None
    journal: str | None = None
    allow_mismatch: bool = False
    seed: int = 0

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        option = config.getoption
        checkpoints = dict(option("dlm_checkpoint"))  # a later NAME=PATH wins
        if option("dlm_max_rounds") < option("dlm_rounds"):
            import pytest

            raise pytest.UsageError(f"--dlm-max-rounds={option('dlm_max_rounds')} is below "
                                    f"--dlm-rounds={option('dlm_rounds')}; it must be at least that")
        return cls(
            grid=option("dlm_grid"),
            paradigms=option("dlm_paradigms"),
            models=option("dlm_models"),
            prompt_lens=option("dlm_prompt"),
            gen_lens=option("dlm_gen"),
            batch_sizes=option("dlm_batch"),
            rounds=option("dlm_rounds"),
            max_rounds=option("dlm_max_rounds"),
            warmup=option("dlm_warmup"),
            max_time_s=option("dlm_max_time"),
            dtype=option("dlm_dtype"),
            device=option("dlm_device"),
            checkpoints=tuple(sorted(checkpoints.items())),
            prompts=option("dlm_prompts"),
            dataset=option("dlm_dataset"),
            decode=DecodeOptions(block_len=option("dlm_block_len"), steps=option("dlm_steps"),
                                 threshold=option("dlm_threshold"), subblock_len=option("dlm_subblock_len")),
            strategies=option("dlm_strategies"),
            tpf=option("dlm_tpf"),
            boundary=option("dlm_boundary"),
            max_batch=option("dlm_max_batch"),
            isolate=option("dlm_isolate"),
            memory_limit_gib=option("dlm_memory_limit"),
            peak_tflops=option("dlm_peak_tflops"),
            peak_gbps=option("dlm_peak_gbps"),
            measure_ceilings=option("dlm_measure_ceilings"),
            gate=tuple(option("dlm_gate")),
            baseline=option("dlm_baseline"),
            journal=option("dlm_journal"),
            allow_mismatch=option("dlm_allow_mismatch"),
            seed=option("dlm_seed"),
        )

    def checkpoint(self, model: str) -> str | None:
        return dict(self.checkpoints).get(model)

    @property
    def isolate_probes(self) -> bool:
        return self.isolate == "on" or (self.isolate == "auto" and self.device.startswith("cuda"))

    def decode_for(self, weights: str) -> DecodeOptions:
        """Decoder options for a model with these weights: random weights cannot decide acceptance,
        so their parallel strategies commit a simulated number of tokens per forward."""
        tpf = self.tpf if self.tpf is not None or weights != "random" else DEFAULT_SIMULATED_TPF
        return dataclasses.replace(self.decode, tpf=tpf)

    def resolved(self) -> Settings:
        """Concrete device, dtype and grid for this machine (imports torch)."""
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"--dlm-device={device}: CUDA is not available on this machine")
            index = int(device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ValueError(f"--dlm-device={device}: only {torch.cuda.device_count()} CUDA device(s) visible")
        dtype = self.dtype if self.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
        grid = self.grid if self.grid != "auto" else ("standard" if device.startswith("cuda") else "smoke")
        return dataclasses.replace(self, device=device, dtype=dtype, grid=grid)

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, DTYPES[self.dtype])
