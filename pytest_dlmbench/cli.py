"""The `dlmbench` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pytest_dlmbench import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlmbench",
        description="Tools for pytest-dlmbench results. Run the benchmarks themselves with "
        "`pytest benchmarks --benchmark-save=NAME`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
