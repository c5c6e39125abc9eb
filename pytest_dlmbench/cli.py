"""The `dlmbench` command: compare and gate saved runs, measure run-to-run noise, merge and report runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from pytest_dlmbench import __version__
from pytest_dlmbench.ab import ORDERS, ABError, checkout, remove_checkout, run_interleaved
from pytest_dlmbench.gate import (
    DEFAULT_GATE,
    EXIT_BROKEN_INPUT,
    EXIT_CRASH,
    EXIT_NOTHING_COMPARED,
    EXIT_REGRESSION,
    GateError,
    GateRule,
    Verdict,
    check_rules,
    compare,
    compared_points,
    noise,
    noise_table,
    paired_compare,
    recommended_threshold,
    verdict_table,
)
from pytest_dlmbench.store import (
    FAILED_KEY,
    RunFileError,
    atomic_write_text,
    load_run,
    machine_mismatch,
    merge_runs,
    missing_shards,
)

COMPARE_FORMATS = ("text", "md", "json")


def _rule(text: str) -> GateRule:
    try:
        return GateRule.parse(text)
    except GateError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlmbench",
        description="Tools for pytest-dlmbench results. Run the benchmarks themselves with "
        "`pytest benchmarks --benchmark-save=NAME`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    compare_cmd = commands.add_parser(
        "compare", help="Gate NEW against BASE.",
        description="Gate NEW against BASE. Exit codes: 0 no regression, 1 regression, 2 unusable file, rule or "
                    "machine mismatch, 3 no point of NEW matches one of BASE (nothing compared), 4 crash.")
    compare_cmd.add_argument("base", help="baseline run (--benchmark-save, --benchmark-json or --dlm-journal file)")
    compare_cmd.add_argument("new", help="run to judge")
    compare_cmd.add_argument("--gate", type=_rule, action="append", metavar="METRIC:THRESHOLD",
                             help="rule, repeatable; e.g. tokens_per_s:5%%, latency_s:0.2. Default: "
                             + DEFAULT_GATE[0].replace("%", "%%"))
    compare_cmd.add_argument("--allow-mismatch", action="store_true",
                             help="compare even when GPU or software versions differ")
    compare_cmd.add_argument("--format", choices=COMPARE_FORMATS, default="text",
                             help="how the verdict is printed: text (a table), md (markdown, as for a pull request) "
                             "or json (every verdict and the exit code). In a GitHub Actions job the markdown is also "
                             "appended to $GITHUB_STEP_SUMMARY, whatever the format")
    ab_cmd = commands.add_parser(
        "ab", usage="dlmbench ab BASE CANDIDATE [options] [-- PYTEST_ARGS ...]",
        epilog="PYTEST_ARGS: what each invocation runs, the same on both sides (default: benchmarks).",
        help="Interleaved A/B: BASE and CANDIDATE measured in alternating runs on this machine, gated on the pairs.",
        description="Run the benchmarks of BASE and CANDIDATE (git refs of --repo, or folders) in alternating "
                    "whole pytest invocations on this machine, then gate the candidate on the pairs' differences "
                    "(a paired t-test on log ratios, Holm-corrected over the points). Exit codes as compare's.")
    ab_cmd.add_argument("base", help="git ref (checked out into a temporary worktree) or folder of the base tree")
    ab_cmd.add_argument("candidate", help="git ref or folder of the candidate tree")
    ab_cmd.add_argument("--pairs", type=_positive, default=5, help="pairs of invocations (default 5)")
    ab_cmd.add_argument("--order", choices=ORDERS, default="abba",
                        help="abba: A B, B A, A B, ... (default); random: a seeded coin orders each pair")
    ab_cmd.add_argument("--seed", type=int, default=0, help="the coin's seed for --order=random")
    ab_cmd.add_argument("--repo", default=".", help="the git repository the refs name (default: .)")
    ab_cmd.add_argument("--out", default="dlmbench-ab", help="folder for every invocation's run and log, and "
                        "ab.json (default: dlmbench-ab)")
    ab_cmd.add_argument("--gate", type=_rule, action="append", metavar="METRIC:THRESHOLD",
                        help="rule, repeatable (default: " + DEFAULT_GATE[0].replace("%", "%%") + ")")
    ab_cmd.add_argument("--format", choices=COMPARE_FORMATS, default="text", help="as for compare")
    history_cmd = commands.add_parser(
        "history", help="One point's metric over saved runs (oldest first), with its change points.",
        description="One point's metric over every run given (files, or folders such as .benchmarks/MACHINE), "
                    "ordered by the time each was saved, with change points: where the median moves by more than "
                    "the threshold and a Mann-Whitney test on the runs' values finds it significant.")
    history_cmd.add_argument("runs", nargs="+", metavar="RUN_OR_FOLDER")
    history_cmd.add_argument("--point", required=True, help="the test id, as `dlmbench compare` prints it")
    history_cmd.add_argument("--metric", default="tokens_per_s")
    history_cmd.add_argument("--threshold", type=_percent, default=5.0,
                             help="smallest change, in percent of the earlier median, that marks a change point "
                             "(default 5)")
    history_cmd.add_argument("--plot", metavar="FILE.png", help="also draw the history")
    history_cmd.add_argument("--format", choices=COMPARE_FORMATS, default="text", help="as for compare")
    report_cmd = commands.add_parser("report", help="Markdown tables and PNG figures for saved runs (overlaid).")
    report_cmd.add_argument("runs", nargs="+", metavar="RUN.json")
    report_cmd.add_argument("--out", required=True, help="folder for report.md and the figures")
    noise_cmd = commands.add_parser("noise", help="Per-point spread of two runs of the same code (an A/A test).")
    noise_cmd.add_argument("first")
    noise_cmd.add_argument("second")
    noise_cmd.add_argument("--metric", default="tokens_per_s")
    merge_cmd = commands.add_parser("merge", help="One run file from a grid measured in several invocations.")
    merge_cmd.add_argument("runs", nargs="+", metavar="RUN.json")
    merge_cmd.add_argument("--out", required=True, help="merged file to write (atomically)")
    merge_cmd.add_argument("--replace", action="store_true",
                           help="a point in several files keeps the last file's result (default: an error)")
    merge_cmd.add_argument("--allow-mismatch", action="store_true",
                           help="merge even when GPU or software versions differ")
    return parser


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value < 1000:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a percentage >= 0, e.g. 5")
    return value


def _positive(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number >= 1")
    return value


def publish(verdicts: list[Verdict], rules: list[GateRule], title: str, fmt: str,
            document: dict[str, object]) -> int:
    """Print the verdict as `fmt` (text, md or json, which adds `document`), append its markdown to
    a GitHub Actions job summary, and return the gate's exit code."""
    failed = [v for v in verdicts if v.fails]
    summary = f"{len(failed)} regression(s) under {', '.join(rule.describe() for rule in rules)}"
    compared = compared_points(verdicts)
    code = EXIT_REGRESSION if failed else 0 if compared else EXIT_NOTHING_COMPARED
    markdown = f"## {title}\n\n**{summary}**\n\n{verdict_table(verdicts, 'github')}\n"
    if fmt == "json":
        print(json.dumps({**document, "rules": [rule.describe() for rule in rules], "regressions": len(failed),
                          "compared_points": compared, "exit_code": code,
                          "verdicts": [dataclasses.asdict(verdict) for verdict in verdicts]}, indent=2))
    else:
        print(markdown if fmt == "md" else f"{verdict_table(verdicts)}\n\n{summary}")
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        try:
            with open(summary_file, "a", encoding="utf8") as stream:
                stream.write(markdown + "\n")
        except OSError as error:
            print(f"error: GITHUB_STEP_SUMMARY={summary_file}: cannot be appended to ({error.strerror or error})",
                  file=sys.stderr)
    return code


def _compare(args: argparse.Namespace) -> int:
    base, new = load_run(args.base), load_run(args.new)
    base.check_baseline()
    differences = machine_mismatch(base.machine, new.machine)
    if differences and not args.allow_mismatch:
        print(f"error: {args.base} and {args.new} come from different machines or software:\n  "
              + "\n  ".join(differences) + "\n(use --allow-mismatch to compare anyway)", file=sys.stderr)
        return EXIT_BROKEN_INPUT
    rules = args.gate or [GateRule.parse(rule) for rule in DEFAULT_GATE]
    try:
        check_rules(rules, base.points)
    except GateError as error:
        print(f"error: {error} (in {args.base})", file=sys.stderr)
        return EXIT_BROKEN_INPUT
    verdicts = compare(base.points, new.points, rules)
    code = publish(verdicts, rules, f"dlmbench compare: `{args.new}` against `{args.base}`", args.format,
                   {"base": args.base, "new": args.new})
    if code == EXIT_NOTHING_COMPARED:
        print(f"error: no point of {args.new} matches a point of {args.base}: nothing was compared", file=sys.stderr)
    return code


def _ab(args: argparse.Namespace) -> int:
    repo, out = Path(args.repo).resolve(), Path(args.out).resolve()
    rules = args.gate or [GateRule.parse(rule) for rule in DEFAULT_GATE]
    pytest_args = args.pytest_args or ["benchmarks"]
    say = (lambda line: print(line, file=sys.stderr)) if args.format == "json" else print
    with tempfile.TemporaryDirectory(prefix="dlmbench-ab-") as scratch:
        checkouts: list[Path] = []  # the worktrees made here, removed whatever happens
        try:
            trees = []
            for name, spec in (("base", args.base), ("candidate", args.candidate)):
                trees.append(checkout(spec, repo, Path(scratch) / name))
                checkouts += [trees[-1]] if trees[-1].parent == Path(scratch) else []
            runs = run_interleaved(trees[0], trees[1], pytest_args, out, args.pairs, args.order, args.seed, say)
        except ABError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_BROKEN_INPUT
        finally:
            for tree in checkouts:
                remove_checkout(repo, tree)
    try:
        check_rules(rules, runs.base[0])
    except GateError as error:
        print(f"error: {error} (in the base runs)", file=sys.stderr)
        return EXIT_BROKEN_INPUT
    verdicts = paired_compare(runs.base, runs.candidate, rules)
    document = {"base": args.base, "candidate": args.candidate, "pairs": args.pairs, "order": args.order,
                "pytest_args": pytest_args,
                "invocations": [{"side": i.side, "pair": i.pair, "run": i.run.name, "seconds": round(i.seconds, 3)}
                                for i in runs.invocations]}
    code = publish(verdicts, rules, f"dlmbench ab: `{args.candidate}` against `{args.base}`, {args.pairs} "
                   f"interleaved pairs ({args.order})", args.format, document)
    atomic_write_text(out / "ab.json", json.dumps(
        {**document, "rules": [rule.describe() for rule in rules], "exit_code": code,
         "verdicts": [dataclasses.asdict(verdict) for verdict in verdicts]}, indent=2))
    if code == EXIT_NOTHING_COMPARED:
        print("error: no point finished in every run of both sides: nothing was compared", file=sys.stderr)
    return code


def _history(args: argparse.Namespace) -> int:
    from pytest_dlmbench.history import change_points, history, history_table, plot_history

    points = history(args.runs, args.point, args.metric)
    changes = change_points([p.value for p in points if p.value is not None], args.threshold)
    commits = [p.commit for p in points if p.value is not None]
    if args.format == "json":
        print(json.dumps({"point": args.point, "metric": args.metric, "threshold_pct": args.threshold,
                          "runs": [dataclasses.asdict(p) for p in points],
                          "change_points": [{**dataclasses.asdict(c), "commit": commits[c.index]} for c in changes]},
                         indent=2))
    else:
        print(f"{args.metric} of {args.point} over {len(points)} runs\n")
        print(history_table(points, changes, "github" if args.format == "md" else "simple"))
        for change in changes:
            print(f"\nchange point at commit {commits[change.index] or '-'}: {change.change_pct:+.1f}% "
                  f"(p={change.p_value:.2g})")
    if args.plot:
        plot_history(points, changes, f"{args.metric}: {args.point}", args.plot)
    return 0


def _noise(args: argparse.Namespace) -> int:
    spreads = noise(load_run(args.first).points, load_run(args.second).points, args.metric)
    print(noise_table(spreads))
    if spreads:
        print(f"\nlargest change {max(abs(s.change_pct) for s in spreads):.2f}% over {len(spreads)} points; "
              f"recommended threshold: {args.metric}:{recommended_threshold(spreads):g}%")
    return 0


def _merge(args: argparse.Namespace) -> int:
    merged, replaced = merge_runs(args.runs, replace=args.replace, allow_mismatch=args.allow_mismatch)
    try:
        atomic_write_text(args.out, json.dumps(merged, indent=4))
    except OSError as error:
        raise RunFileError(f"{args.out}: cannot be written ({error.strerror or error})") from None
    for line in replaced:
        print(f"replaced {line}")
    for shard in missing_shards((merged["machine_info"]["dlmbench"].get("shard") or "").split(",")):
        print(f"note: no file holds shard {shard} (--dlm-shard); the merged run lacks its points", file=sys.stderr)
    print(f"{args.out}: {len(merged['benchmarks'])} finished and {len(merged[FAILED_KEY])} failed points "
          f"from {len(args.runs)} files")
    return 0


def _report(args: argparse.Namespace) -> int:
    from pytest_dlmbench.report import write_report

    for path in write_report(args.runs, args.out):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.pytest_args = argv[split + 1 :]
    if args.pytest_args and args.command != "ab":
        parser.error(f"arguments after --: {' '.join(args.pytest_args)}: only `dlmbench ab` passes them to pytest")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {"compare": _compare, "ab": _ab, "history": _history, "noise": _noise, "merge": _merge,
                "report": _report}[args.command](args)
    except RunFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BROKEN_INPUT
    except Exception:
        traceback.print_exc()
        return EXIT_CRASH


if __name__ == "__main__":
    raise SystemExit(main())
