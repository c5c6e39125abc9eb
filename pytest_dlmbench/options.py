"""The --dlm-* command-line options as one table: each row registers a pytest option, validates
its value and names the `Settings` field it fills (core.py), so option, field and the probe
process's settings (serialised whole) cannot drift apart.

Option values are checked when pytest parses them (no torch import, so `pytest --help` stays
fast); choices that depend on the machine ("auto" device, dtype and grid) are resolved once,
lazily, by `Settings.resolved()`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_dlmbench.core import (
    DEFAULT_FIDELITY,
    DEFAULT_MAX_ROUNDS,
    DEFAULT_ROUNDS,
    DEFAULT_RUNTIME,
    DEFAULT_SIMULATED_TPF,
    DTYPES,
    FIDELITY_NAMES,
    DecodeOptions,
    Settings,
)
from pytest_dlmbench.extensions import ExtensionError, load_extensions
from pytest_dlmbench.gate import GateError, GateRule
from pytest_dlmbench.grid import GRIDS
from pytest_dlmbench.models import MODEL_SPECS
from pytest_dlmbench.paradigms import PARADIGMS
from pytest_dlmbench.paradigms.base import strategy_names
from pytest_dlmbench.runtimes import RUNTIMES

if TYPE_CHECKING:
    import pytest

PROMPT_SOURCES = ("synthetic", "gsm8k")


def _load_extensions() -> None:
    """The installed extensions, before a value that may name what they add is checked."""
    try:
        load_extensions()
    except ExtensionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _names(kind: str, allowed: Callable[[], Iterable[str]]) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list of names, checked against `allowed()`: read live, once the installed
    extensions (extensions.py) have registered theirs."""
    def parse(text: str) -> tuple[str, ...]:
        _load_extensions()
        known = tuple(allowed())
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        if names == ("all",):
            return known
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, unknown)) or repr(text)}; allowed: all, {', '.join(known)}"
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


def _number(minimum: float, kind: str, maximum: float = math.inf) -> Callable[[str], float]:
    """A finite number in [minimum, maximum] (inf and nan would reach the saved JSON as non-JSON)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (minimum <= value <= maximum and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}")
        return value

    return parse


def _dispersion(text: str) -> float:
    value = _number(0.0, "a finite dispersion: 0, or a number >= 1")(text)
    if 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dispersion: 0 (every row the mean) or a number >= 1 "
                                         "(1: Poisson, above: negative binomial)")
    return value


def _gate_rule(text: str) -> str:
    try:
        GateRule.parse(text)
        return text.strip()
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
    _load_extensions()  # a registered model may take a checkpoint too
    if name not in MODEL_SPECS:
        raise argparse.ArgumentTypeError(f"unknown model {name!r} in {text!r}; known models: {', '.join(MODEL_SPECS)}")
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"checkpoint path {path!r} for {name} is not a directory")
    return name, path


def _devices(text: str) -> tuple[int, ...] | str:
    if text.strip() == "all":
        return "all"
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device list; allowed: all, or CUDA indices such as 0,1,3 "
                                         "(an index listed twice runs two workers on that GPU)")
    return tuple(int(part) for part in parts)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.strip().isdigit() and count.strip().isdigit() and 1 <= int(index) <= int(count)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard; allowed: I/N with 1 <= I <= N, e.g. 2/4")
    return int(index), int(count)


def _choice(allowed: tuple[str, ...], kind: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}; allowed: {', '.join(allowed)}")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    """One --dlm-* option: how pytest parses it and which `Settings` field it fills."""

    flag: str
    field: str  # a Settings field, or "decode.NAME" for a DecodeOptions field
    help: str  # what it does, then "Default: ..."
    type: Callable[[str], Any] | None = None
    default: Any = None
    action: str | None = None
    metavar: str | None = None
    to_setting: Callable[[Any], Any] = lambda value: value  # the parsed value -> the field's value

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


def _checkpoints(pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(dict(pairs).items()))  # a later NAME=PATH wins


OPTIONS: tuple[Option, ...] = (
    Option("--dlm-grid", "grid", "Benchmark grid: smoke (tiny models), standard (7-8B shapes) or paper (the full "
           "seed grid). Default: standard with CUDA, smoke without.", _choice(("auto", *GRIDS), "grid"), "auto"),
    Option("--dlm-paradigms", "paradigms", f"Comma-separated paradigms to run ({', '.join(PARADIGMS)}, a "
           "registered one, or all). Default: all.", _names("paradigm", lambda: PARADIGMS)),
    Option("--dlm-models", "models", "Comma-separated models to run instead of the grid's, each with the paradigms "
           f"it serves ({', '.join(name for name, spec in MODEL_SPECS.items() if not spec.tiny)}, their tiny-* "
           "siblings, or a registered one). Default: the grid's models.", _names("model", lambda: MODEL_SPECS)),
    Option("--dlm-prompt", "prompt_lens", "Only these prompt lengths of the grid. Default: all.", _int_list),
    Option("--dlm-gen", "gen_lens", "Only these generation lengths of the grid. Default: all.", _int_list),
    Option("--dlm-batch", "batch_sizes", "Only these batch sizes of the grid. Default: all.", _int_list),
    Option("--dlm-rounds", "rounds", "Timed rounds per point, never cut by the time budget; the gate needs 6 a side "
           f"to judge the standard grid's 30 points at once. Default: {DEFAULT_ROUNDS}.", positive_int, DEFAULT_ROUNDS),
    Option("--dlm-max-rounds", "max_rounds", "With --dlm-gate: the most rounds a point is measured to when its "
           f"baseline's rounds are too few for the gate to decide. Default: {DEFAULT_MAX_ROUNDS}.", positive_int,
           DEFAULT_MAX_ROUNDS),
    Option("--dlm-warmup", "warmup", "Untimed full generations before timing. Default: 1.", _non_negative_int, 1),
    Option("--dlm-max-time", "max_time_s", "Per-point time budget in seconds: a point whose timed rounds would "
           "take longer warns with their cost (rounds are never cut); a boundary whose full generation would take "
           "longer is saved untimed. Default: 60.", _number(1e-9, "a positive number of seconds"), 60.0),
    Option("--dlm-dtype", "dtype", "Weight and activation dtype (bf16, fp16, fp32). Default: bf16 on CUDA, fp32 "
           "on CPU.", _choice(("auto", *DTYPES), "dtype"), "auto"),
    Option("--dlm-device", "device", "cpu, cuda or cuda:N. Default: cuda if available.", _device, "auto"),
    Option("--dlm-checkpoint", "checkpoints", "Load MODEL's real weights from a local directory of safetensors "
           "files (repeatable). Default: seeded random weights.", _checkpoint, [], "append", "NAME=PATH",
           _checkpoints),
    Option("--dlm-prompts", "prompts", "synthetic (seeded random ids of the exact length) or gsm8k (k-shot GSM8K "
           "prompts; needs the model's --dlm-checkpoint for its tokenizer). Default: synthetic.",
           _choice(PROMPT_SOURCES, "prompt source"), "synthetic"),
    Option("--dlm-dataset", "dataset", "Local GSM8K copy for --dlm-prompts=gsm8k (save_to_disk folder or data "
           "files). Default: the local Hugging Face cache, offline.", metavar="PATH"),
    Option("--dlm-block-len", "decode.block_len", "dlm: semi-autoregressive block length; gen lengths must be "
           "multiples of it. Default: 32.", positive_int, 32),
    Option("--dlm-steps", "decode.steps", "dlm: total denoising steps, a multiple of gen_len / block_len. "
           "Default: gen_len (one token per step).", positive_int),
    Option("--dlm-strategies", "strategies", "Comma-separated strategies, each run where the paradigm has it "
           f"({', '.join(strategy_names())}, a registered one, or all). Default: the grid's (smoke: all; standard: "
           "baseline; paper: baseline, dual_cache, parallel).", _names("strategy", strategy_names)),
    Option("--dlm-runtime", "runtimes", "How forwards run: graphs (static shapes, each forward shape captured once "
           "as a CUDA graph and replayed; uncaptured on the CPU), eager (transformers as the published decoders use "
           "it), a comma-separated list, or all; points not under the default get the runtime in their id. "
           f"Default: {DEFAULT_RUNTIME}.", _names("runtime", lambda: RUNTIMES), (DEFAULT_RUNTIME,)),
    Option("--dlm-fidelity", "fidelities", "Per-forward work of the diffusion decoders: reference (what the "
           "published code computes: logits at every forwarded position, Fast-dLLM's float64 scoring, v2's last "
           "block decoded whole), lean (logits and float32 scoring only where needed), a comma-separated list, or "
           "all; both decode the same tokens; points not under the default get the fidelity in their id. "
           f"Default: {DEFAULT_FIDELITY}.", _names("fidelity", lambda: FIDELITY_NAMES), (DEFAULT_FIDELITY,)),
    Option("--dlm-temperature", "decode.temperature", "Sample with Gumbel-max noise at this temperature (the "
           "diffusion decoders' noise in the fidelity's dtype: float64 for reference dlm); 0 is greedy. Default: 0.",
           _number(0.0, "a finite temperature >= 0"), 0.0),
    Option("--dlm-threshold", "decode.threshold", "Parallel strategies with real weights: commit masked positions "
           "more confident than this. Default: 0.9.", _number(1e-9, "a confidence threshold in (0, 1]", 1.0), 0.9),
    Option("--dlm-tpf", "tpf", "Parallel strategies: commit this many of the most confident positions per forward "
           f"(simulated acceptance). Default: {DEFAULT_SIMULATED_TPF} with random weights; real confidences with a "
           "checkpoint. Each row draws its own count per forward with this mean (--dlm-tpf-dispersion), and a batch "
           "forwards until its slowest row is done.", _number(1.0, "a finite tokens-per-forward target >= 1")),
    Option("--dlm-tpf-dispersion", "decode.tpf_dispersion", "Simulated acceptance: variance / mean of each row's "
           "commits beyond the first per forward: 0 (every row commits the running mean), 1 (Poisson) or above "
           "(negative binomial); seeded by --dlm-seed. Default: 1.", _dispersion, 1.0),
    Option("--dlm-acceptance-trace", "acceptance_trace", "Points with a --dlm-checkpoint and real acceptance write "
           "each row's commits per step to PATH; random-weight points of the parallel strategies replay them "
           "(matched on paradigm, model, prompt, gen, batch and strategy). Default: off.", metavar="PATH"),
    Option("--dlm-subblock-len", "decode.subblock_len", "block: sub-block length, a divisor of the block size. "
           "Default: the model's (8).", positive_int),
    Option("--dlm-boundary", "boundary", "Run the OOM boundary search (benchmarks/test_oom_boundary.py): the "
           "largest batch that completes a full generation, per paradigm, strategy, prompt and gen. Default: off.",
           default=False, action="store_true"),
    Option("--dlm-max-batch", "max_batch", "Largest batch the boundary search tries. Default: 1024.", positive_int,
           1024),
    Option("--dlm-isolate", "isolate", "Run each boundary probe in a fresh process (on), in this process (off), or "
           "on when CUDA is used (auto). Default: auto.", _choice(("auto", "on", "off"), "isolation mode"), "auto"),
    Option("--dlm-memory-limit", "memory_limit_gib", "Cap usable GPU memory at GIB, to ask where a point would run "
           "out of memory on a smaller card. Default: the whole device.", _number(1e-3, "a positive number of GiB"),
           metavar="GIB"),
    Option("--dlm-peak-tflops", "peak_tflops", "The device's peak dense TFLOP/s for the roofline (any device). "
           "Default: the table entry for the GPU's name.", _number(1e-6, "a positive TFLOP/s")),
    Option("--dlm-peak-gbps", "peak_gbps", "The device's peak memory bandwidth in GB/s for the roofline (any "
           "device). Default: the table entry for the GPU's name.", _number(1e-6, "a positive GB/s")),
    Option("--dlm-measure-ceilings", "measure_ceilings", "Measure copy bandwidth and a large bf16 matmul on this "
           "GPU and use them as the roofs. Default: off.", default=False, action="store_true"),
    Option("--dlm-gate", "gate", "Fail the session when a point regresses against the baseline (repeatable): "
           "tokens_per_s:5%%, latency_s:0.2, max_batch_size:0, my_key:3%%:higher. Default with --dlm-baseline: "
           "tokens_per_s:5%%.", _gate_rule, [], "append", "METRIC:THRESHOLD", tuple),
    Option("--dlm-baseline", "baseline", "Baseline run for --dlm-gate. Default: the run --benchmark-compare "
           "selects.", metavar="PATH"),
    Option("--dlm-allow-mismatch", "allow_mismatch", "Gate against a baseline from a different GPU or software "
           "versions. Default: refuse.", default=False, action="store_true"),
    Option("--dlm-seed", "seed", "Seed for random weights and prompts. Default: 0.", _non_negative_int, 0),
    Option("--dlm-devices", "devices", "With pytest-xdist (-n N): the GPUs the workers own, one worker each: all, or "
           "CUDA indices such as 0,1,3; an index listed twice runs two workers on that GPU (the saved run records "
           "which worker ran each point on which GPU). -n auto starts one worker per listed GPU. Default: one "
           "process; workers on CUDA need this option.", _devices),
    Option("--dlm-shard", "shard", "Run slice I of N of the selection (1 <= I <= N; each shard has whole points, "
           "every runtime of a point in the same one), e.g. one per CI job; `dlmbench merge` joins the N saved "
           "files. Default: the whole selection.", _shard, metavar="I/N"),
    Option("--dlm-journal", "journal", "Append each point to PATH (a new file, one JSON line per point) as soon as "
           "it ends, so a killed run keeps what it measured; `dlmbench merge PATH --out RUN.json` makes it a run "
           "file. Default: off.", metavar="PATH"),
)


def add_options(parser: pytest.Parser) -> None:
    """Register the option group (uniform help: what it does, then the default)."""
    group = parser.getgroup("dlmbench", "dlmbench: generation benchmarks for AR, DLM and block-diffusion LMs")
    for option in OPTIONS:
        extra = {key: value for key, value in (("type", option.type), ("metavar", option.metavar)) if value is not None}
        group.addoption(option.flag, dest=option.dest, default=option.default, action=option.action or "store",
                        help=option.help, **extra)


def settings_from_config(config: pytest.Config) -> Settings:
    """The Settings the options describe; --dlm-max-rounds below --dlm-rounds is a usage error."""
    import pytest

    values = {option.field: option.to_setting(config.getoption(option.dest)) for option in OPTIONS}
    if values["max_rounds"] < values["rounds"]:
        raise pytest.UsageError(f"--dlm-max-rounds={values['max_rounds']} is below --dlm-rounds={values['rounds']}; "
                                "it must be at least that")
    trace = values["acceptance_trace"]
    if trace is not None and not values["checkpoints"] and not Path(trace).is_file():
        raise pytest.UsageError(f"--dlm-acceptance-trace={trace}: no such file to replay (a run with "
                                "--dlm-checkpoint writes one)")
    decode = {name.removeprefix("decode."): value for name, value in values.items() if name.startswith("decode.")}
    plain = {name: value for name, value in values.items() if not name.startswith("decode.")}
    return Settings(**plain, decode=DecodeOptions(**decode))


def options_markdown() -> str:
    """docs/options.md: every option with its help, from this table (`python -m pytest_dlmbench.options`
    rewrites it; a test fails when the two differ)."""
    from tabulate import tabulate

    rows = [[f"`{option.flag}{'=' + option.metavar if option.metavar else ''}`", option.help.replace("|", "\\|")]
            for option in OPTIONS]
    return ("# Options\n\nGenerated from `pytest_dlmbench/options.py` by `python -m pytest_dlmbench.options > "
            "docs/options.md`; `pytest --help` prints the same text.\n\n"
            + tabulate(rows, headers=["option", "what it does, and its default"], tablefmt="github") + "\n")


if __name__ == "__main__":
    print(options_markdown(), end="")
