"""Human-readable views of results: the terminal summary table and the `dlmbench report` files."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tabulate import tabulate

from pytest_dlmbench.core import MEASUREMENT_AXES, PAPER_AI_CAVEAT, PointMetrics

SUMMARY_HEADERS = ("paradigm", "strategy", "runtime", "fidelity", "model", "prompt", "gen", "batch", "tok/s",
                   "ms/forward", "NFE",
                   "TPF", "peak MiB", "status")


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def summary_table(results: Iterable[PointMetrics]) -> str:
    """One row per point; peak memory is torch's allocated peak on CUDA and RSS on CPU."""
    rows = [
        (m.paradigm, m.strategy, m.runtime, m.fidelity, m.model, m.prompt_len, m.gen_len, m.batch_size, m.tokens_per_s,
         m.ms_per_forward, m.nfe,
         m.tokens_per_forward, _mib(m.peak_bytes), m.status)
        for m in results
    ]
    return tabulate(rows, headers=SUMMARY_HEADERS, floatfmt=".2f", missingval="-")


# ---- `dlmbench report`: markdown tables and figures from saved runs -------------------------

REPORT_HEADERS = ("run", "paradigm", "strategy", "runtime", "fidelity", "model", "prompt", "gen", "batch", "status",
                  "tok/s", "tok/J", "TTFT ms", "p99 ms", "ms/forward", "NFE", "TPF", "row TPF", "peak GiB",
                  "AI (FLOP/B)", "paper AI (FLOP/element)",
                  "TFLOP/s", "roofline %", "bound")


def _points(runs: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    points = [{**MEASUREMENT_AXES, **info, "run": label, "test": test} for label, points in runs.items()
              for test, info in points.items() if "paradigm" in info]
    varying = [axis for axis in MEASUREMENT_AXES if len({p[axis] for p in points}) > 1]
    for p in points:
        label = p["paradigm"] if p.get("strategy", "baseline") == "baseline" else f"{p['paradigm']}+{p['strategy']}"
        p["label"] = f"{label} [{', '.join(p[axis] for axis in varying)}]" if varying else label
    return points


def _series_label(point: dict[str, Any], runs: int) -> str:
    return f"{point['run']}: {point['label']}" if runs > 1 else point["label"]


def report_table(points: list[dict[str, Any]]) -> str:
    def gib(value: Any) -> float | None:
        return None if value is None else value / 2**30

    def ms(value: Any) -> float | None:
        return None if value is None else value * 1e3

    rows = sorted(
        ((p["run"], p["paradigm"], p.get("strategy", "baseline"), p["runtime"], p["fidelity"], p["model"],
          p["prompt_len"], p["gen_len"], p["batch_size"], p.get("status", "ok"), p.get("tokens_per_s"),
          p.get("tokens_per_joule"), ms(p.get("ttft_s")), ms(p.get("request_latency_p99_s")), p.get("ms_per_forward"),
          p.get("nfe"), p.get("tokens_per_forward"), p.get("row_tokens_per_forward"),
          gib(p.get("peak_mem_allocated_bytes") or p.get("peak_rss_bytes")), p.get("arithmetic_intensity"),
          p.get("ai_paper_flop_per_element", p.get("ai_paper")), p.get("achieved_tflops"),
          None if p.get("roofline_fraction") is None else 100 * p["roofline_fraction"], p.get("bound"))
         for p in points),
        key=lambda row: tuple(str(v) if isinstance(v, str) or v is None else f"{v:012.3f}" for v in row[:9]),
    )
    return tabulate(rows, headers=REPORT_HEADERS, tablefmt="github", floatfmt=".3g", missingval="-")


HOST_TAX_HEADERS = ("paradigm", "strategy", "fidelity", "model", "prompt", "gen", "batch", "eager tok/s",
                    "graphs tok/s",
                    "speed-up", "eager ms/forward", "graphs ms/forward", "capture s", "equal tokens")


def _point_axes(p: dict[str, Any]) -> tuple[Any, ...]:
    """What names a point apart from its run and runtime, in the host-tax table's column order."""
    return (p["paradigm"], p.get("strategy", "baseline"), p["fidelity"], p["model"], p["prompt_len"], p["gen_len"],
            p["batch_size"])


def host_tax_table(points: list[dict[str, Any]]) -> str | None:
    """Each point measured under both eager and graphs (in any of the runs): what the host costs."""
    done = [p for p in points if p.get("status", "ok") == "ok" and p.get("tokens_per_s")]
    by_runtime = {(p["runtime"], *_point_axes(p)): p for p in done}
    rows = []
    for (runtime, *key), graphs in sorted(by_runtime.items(), key=lambda item: str(item[0])):
        eager = by_runtime.get(("eager", *key))
        if runtime == "graphs" and eager is not None:
            rows.append((*key, eager["tokens_per_s"], graphs["tokens_per_s"],
                         graphs["tokens_per_s"] / eager["tokens_per_s"], eager.get("ms_per_forward"),
                         graphs.get("ms_per_forward"), graphs.get("capture_s"),
                         graphs.get("runtime_agreement", eager.get("runtime_agreement"))))
    return tabulate(rows, headers=HOST_TAX_HEADERS, tablefmt="github", floatfmt=".3g", missingval="-") if rows else None


def paradigm_order(points: list[dict[str, Any]]) -> str | None:
    """At batch 1, the baseline paradigms from fastest to slowest per (run, runtime, prompt, gen)."""
    order: dict[tuple[Any, ...], list[tuple[float, str]]] = {}
    for p in points:
        if p["batch_size"] == 1 and p.get("strategy", "baseline") == "baseline" and p.get("tokens_per_s"):
            order.setdefault((p["run"], p["runtime"], p["fidelity"], p["prompt_len"], p["gen_len"]), []).append(
                (p["tokens_per_s"], p["paradigm"]))
    rows = [(*key, " > ".join(f"{name} {rate:.1f}" for rate, name in sorted(ranked, reverse=True)))
            for key, ranked in sorted(order.items()) if len(ranked) > 1]
    return tabulate(rows, headers=("run", "runtime", "fidelity", "prompt", "gen", "tok/s, fastest first"),
                    tablefmt="github") if rows else None


WALL_TIME_HEADERS = ("run", "runtime", "points", "wall s", "capture s", "wall / eager's")


def wall_time_table(points: list[dict[str, Any]]) -> str | None:
    """Per run and runtime, the points' summed `point_wall_s` (start-up, capture, warm-up and rounds):
    what a grid costs to measure under each runtime, and graphs' cost against eager's on the same points."""
    # (run, runtime) -> point -> (wall, capture)
    times: dict[tuple[str, str], dict[tuple[Any, ...], tuple[float, float]]] = {}
    for p in points:
        if p.get("point_wall_s") is not None:
            times.setdefault((p["run"], p["runtime"]), {})[_point_axes(p)] = (p["point_wall_s"],
                                                                               p.get("capture_s") or 0.0)
    rows = []
    for (run, runtime), timed in sorted(times.items()):
        eager = times.get((run, "eager"), {})
        shared = [point for point in timed if point in eager]  # the ratio covers points measured under both only
        ratio = (sum(timed[point][0] for point in shared) / sum(eager[point][0] for point in shared)
                 if shared and runtime != "eager" else None)
        rows.append((run, runtime, len(timed), sum(wall for wall, _ in timed.values()),
                     sum(capture for _, capture in timed.values()), ratio))
    if not rows:
        return None
    return tabulate(rows, headers=WALL_TIME_HEADERS, tablefmt="github", floatfmt=".3g", missingval="-")


@contextmanager
def _figure(path: Path, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A headless matplotlib figure saved to `path` as PNG when the block ends, with one legend for all
    its panels outside them, so a grid of 18 series hides no point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(layout="constrained", **subplots)
    try:
        yield figure, axes
        legend: dict[str, Any] = {}
        for axis in figure.axes:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        if legend:
            figure.legend(legend.values(), legend.keys(), loc="outside right upper", fontsize=8)
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)


def series_styles(labels: set[str]) -> dict[str, dict[str, Any]]:
    """One colour per paradigm and strategy, one line style and marker per runtime (or other varying
    axis, the label's bracket), so that a runtime's pair of series reads as one colour."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    def split(label: str) -> tuple[str, str]:
        base, _, axes = label.partition(" [")
        return base, axes

    bases = {base: index for index, base in enumerate(sorted({split(label)[0] for label in labels}))}
    variants = {variant: index for index, variant in enumerate(sorted({split(label)[1] for label in labels}))}
    palette = colormaps["tab10" if len(bases) <= 10 else "tab20"]
    assert isinstance(palette, ListedColormap)  # the qualitative maps list their colours
    colours: list[Any] = list(palette.colors)  # type: ignore[arg-type]  # matplotlib types it as any array-like
    lines, markers = ["-", "--", ":", "-."], ["o", "s", "^", "D"]
    styles = {}
    for label in labels:
        base_name, variant_name = split(label)
        base, variant = bases[base_name], variants[variant_name]
        styles[label] = {"color": colours[base % len(colours)], "linestyle": lines[variant % len(lines)],
                         "marker": markers[variant % len(markers)]}
    return styles


def _integer_ticks(axis: Any, values: list[int]) -> None:
    """Label a log x axis with the measured values themselves (64, 128, ...), no minor ticks."""
    from matplotlib.ticker import NullLocator

    if values:
        axis.set_xticks(values, labels=[str(value) for value in values])
    axis.xaxis.set_minor_locator(NullLocator())


def _sweep_figure(points: list[dict[str, Any]], runs: int, x_key: str, title: str, path: Path) -> None:
    """Throughput against `x_key`, one panel per prompt length; OOM points drawn as red crosses."""
    prompts = sorted({p["prompt_len"] for p in points})
    styles = series_styles({_series_label(p, runs) for p in points})
    with _figure(path, nrows=1, ncols=len(prompts), figsize=(6 * len(prompts) + 3, 4.5),
                 squeeze=False) as (figure, axes):
        for axis, prompt_len in zip(axes[0], prompts):
            chosen = [p for p in points if p["prompt_len"] == prompt_len]
            for label in sorted({_series_label(p, runs) for p in chosen}):
                series = sorted((p for p in chosen if _series_label(p, runs) == label), key=lambda p: p[x_key])
                done = [p for p in series if p.get("status", "ok") == "ok"]
                if done:
                    axis.plot([p[x_key] for p in done], [p["tokens_per_s"] for p in done], label=label, **styles[label])
                failed = [p for p in series if p.get("status") == "oom"]
                if failed:
                    floor = min((p["tokens_per_s"] for p in done), default=1.0)
                    axis.scatter([p[x_key] for p in failed], [floor] * len(failed), marker="x", color="red", s=60,
                                 label=f"{label} OOM", zorder=3)
            axis.set(xscale="log", yscale="log", xlabel=x_key.replace("_", " "), ylabel="tokens/s",
                     title=f"prompt {prompt_len}")
            _integer_ticks(axis, sorted({p[x_key] for p in chosen}))
            axis.grid(True, which="both", alpha=0.3)
        figure.suptitle(title)


Speedups = dict[tuple[str, int], list[tuple[int, float]]]  # (series, prompt) -> [(x, speed-up)], x ascending


def strategy_speedups(points: list[dict[str, Any]], runs: int) -> tuple[str, Speedups]:
    """Each strategy's throughput over its paradigm's baseline at the same point, per (series, prompt),
    against batch size, or against generation length where the strategies ran at one batch size (the
    batch-1 strategy table); the other of the two joins the series label where it varies."""
    def baseline_twin(p: dict[str, Any]) -> tuple[Any, ...]:
        return (p["run"], p["runtime"], *_point_axes({**p, "strategy": "baseline"}))

    baseline = {baseline_twin(p): p for p in points
                if p.get("strategy", "baseline") == "baseline" and p.get("tokens_per_s")}
    measured = [p for p in points if p.get("strategy", "baseline") != "baseline" and p.get("tokens_per_s")
                and baseline_twin(p) in baseline]
    x_key, other_key = (("batch_size", "gen_len") if len({p["batch_size"] for p in measured}) > 1
                        else ("gen_len", "batch_size"))
    other_varies = len({p[other_key] for p in measured}) > 1
    ratios: Speedups = {}
    for p in measured:
        label = _series_label(p, runs) + (f" · {other_key.split('_')[0]} {p[other_key]}" if other_varies else "")
        ratios.setdefault((label, p["prompt_len"]), []).append(
            (p[x_key], p["tokens_per_s"] / baseline[baseline_twin(p)]["tokens_per_s"]))
    for values in ratios.values():
        values.sort()
    return x_key, ratios


def _speedup_figure(points: list[dict[str, Any]], runs: int, path: Path) -> bool:
    """The strategy speed-ups, one panel per prompt length; False (no file) where no strategy ran."""
    x_key, ratios = strategy_speedups(points, runs)
    if not ratios:
        return False
    prompts = sorted({prompt for _, prompt in ratios})
    styles = series_styles({label for label, _ in ratios})
    x_name = x_key.replace("_", " ").replace("len", "length")
    with _figure(path, nrows=1, ncols=len(prompts), figsize=(6 * len(prompts) + 3, 4.5),
                 squeeze=False) as (figure, axes):
        for axis, prompt_len in zip(axes[0], prompts):
            for (label, prompt), values in sorted(ratios.items()):
                if prompt == prompt_len:
                    axis.plot([x for x, _ in values], [r for _, r in values], label=label, **styles[label])
            axis.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            axis.set(xscale="log", xlabel=x_name, ylabel="speed-up over baseline", title=f"prompt {prompt_len}")
            _integer_ticks(axis, sorted({x for (_, prompt), values in ratios.items() if prompt == prompt_len
                                         for x, _ in values}))
            axis.grid(True, which="both", alpha=0.3)
        figure.suptitle(f"Strategy speed-ups vs {x_name}")
    return True


def _roofline_figure(points: list[dict[str, Any]], runs: int, path: Path) -> None:
    """Every point at (arithmetic intensity, achieved TFLOP/s), under its device's roofs."""
    with _figure(path, figsize=(10.5, 5.5)) as (_, axis):
        measured = [p for p in points if p.get("achieved_tflops") and p.get("arithmetic_intensity")]
        styles = series_styles({_series_label(p, runs) for p in measured})
        for label in sorted(styles):
            chosen = [p for p in measured if _series_label(p, runs) == label]
            axis.scatter([p["arithmetic_intensity"] for p in chosen], [p["achieved_tflops"] for p in chosen],
                         label=label, s=25, color=styles[label]["color"], marker=styles[label]["marker"])
        intensities = [p["arithmetic_intensity"] for p in measured] or [1.0]
        low, high = min(intensities) / 4, max(intensities) * 4
        for tflops, gbps in sorted({(p["peak_tflops"], p["peak_gbps"]) for p in measured if p.get("peak_tflops")}):
            ridge = tflops * 1e3 / gbps
            xs = [min(low, ridge / 4), ridge, max(high, ridge * 4)]
            axis.plot(xs, [min(tflops, x * gbps / 1e3) for x in xs], color="black", linewidth=1.2,
                      label=f"roof {tflops:g} TFLOP/s, {gbps:g} GB/s")
        axis.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)", ylabel="achieved TFLOP/s",
                 title="Roofline")
        axis.grid(True, which="both", alpha=0.3)


def write_report(run_paths: list[str], out: str | Path) -> list[Path]:
    """Markdown report and PNG figures for one or more saved runs (overlaid); returns the files."""
    from pytest_dlmbench.store import atomic_write_text, load_run

    stems = [Path(path).stem for path in run_paths]
    labels = [stem if stems.count(stem) == 1 else f"{index + 1}:{stem}" for index, stem in enumerate(stems)]
    runs = {label: load_run(path).points for label, path in zip(labels, run_paths)}
    points = _points(runs)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    figures = [folder / "throughput_vs_gen.png", folder / "throughput_vs_batch.png", folder / "roofline.png"]
    batch_one = [p for p in points if p["batch_size"] == 1]
    _sweep_figure(batch_one, len(runs), "gen_len", "Throughput vs generation length (batch 1)", figures[0])
    gens = {p["gen_len"] for p in points if p["batch_size"] > 1}
    sweep_gen = max(gens, key=lambda g: sum(p["gen_len"] == g for p in points)) if gens else None
    _sweep_figure([p for p in points if p["gen_len"] == sweep_gen] if sweep_gen else batch_one, len(runs),
                  "batch_size", f"Throughput vs batch size (gen {sweep_gen})", figures[1])
    _roofline_figure(points, len(runs), figures[2])
    if _speedup_figure(points, len(runs), folder / "strategy_speedup.png"):
        figures.append(folder / "strategy_speedup.png")
    lines = [
        "# dlmbench report", "",
        "Runs: " + ", ".join(f"`{path}`" for path in run_paths), "",
        *[f"![{figure.stem}]({figure.name})" for figure in figures], "",
        "## Points", "",
        report_table(points), "",
        "AI: analytic arithmetic intensity of the whole generation, in FLOP per byte (the roofline's unit); paper AI: "
        f"the seed paper's Appendix A closed form as published (none for caching strategies): {PAPER_AI_CAVEAT}; "
        "tok/J: tokens per joule of the whole GPU (NVML); TTFT and p99: a request's time to its first committed token "
        "(median) and its latency's 99th percentile (docs/metrics.md); "
        "row TPF: the mean over rows of gen / the forwards each row committed in; roofline %: measured tokens/s over "
        "the roofline-attainable tokens/s.",
    ]
    for title, table, note in (
        ("Paradigm order at batch 1", paradigm_order(points), "Baseline strategies only."),
        ("Host tax: eager against graphs", host_tax_table(points),
         "Points measured under both runtimes; capture s is never timed; equal tokens: the share of tokens equal "
         "under both runtimes (bf16 kernels differ, so ties can break differently)."),
        ("Wall time by runtime", wall_time_table(points),
         "Each point's start-up, capture, warm-up and rounds, summed; wall / eager's: over the points measured under "
         "both runtimes in the run."),
    ):
        if table is not None:
            lines += ["", f"## {title}", "", table, "", note]
    markdown = folder / "report.md"
    atomic_write_text(markdown, "\n".join(lines) + "\n")
    return [markdown, *figures]
