"""The `dlmbench` command: compare and gate saved runs, measure run-to-run noise, merge and report runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Sequence

from pytest_dlmbench import __version__
from pytest_dlmbench.gate import (
    DEFAULT_GATE,
    EXIT_BROKEN_INPUT,
    EXIT_CRASH,
    EXIT_NOTHING_COMPARED,
    EXIT_REGRESSION,
    GateError,
    GateRule,
    check_rules,
    compare,
    compared_points,
    noise,
    noise_table,
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
    failed = [v for v in verdicts if v.fails]
    summary = f"{len(failed)} regression(s) under {', '.join(rule.describe() for rule in rules)}"
    compared = compared_points(verdicts)
    code = EXIT_REGRESSION if failed else 0 if compared else EXIT_NOTHING_COMPARED
    markdown = (f"## dlmbench compare\n\n`{args.new}` against `{args.base}`: **{summary}**\n\n"
                f"{verdict_table(verdicts, 'github')}\n")
    if args.format == "json":
        print(json.dumps({"base": args.base, "new": args.new, "rules": [rule.describe() for rule in rules],
                          "regressions": len(failed), "compared_points": compared, "exit_code": code,
                          "verdicts": [dataclasses.asdict(verdict) for verdict in verdicts]}, indent=2))
    else:
        print(markdown if args.format == "md" else f"{verdict_table(verdicts)}\n\n{summary}")
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_file:
        try:
            with open(summary_file, "a", encoding="utf8") as stream:
                stream.write(markdown + "\n")
        except OSError as error:
            print(f"error: GITHUB_STEP_SUMMARY={summary_file}: cannot be appended to ({error.strerror or error})",
                  file=sys.stderr)
    if code == EXIT_NOTHING_COMPARED:
        print(f"error: no point of {args.new} matches a point of {args.base}: nothing was compared", file=sys.stderr)
    return code


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
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {"compare": _compare, "noise": _noise, "merge": _merge, "report": _report}[args.command](args)
    except RunFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BROKEN_INPUT
    except Exception:
        traceback.print_exc()
        return EXIT_CRASH


if __name__ == "__main__":
    raise SystemExit(main())
