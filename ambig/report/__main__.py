"""python -m ambig.report <dir> [<dir> ...] [--out DIR]: aggregate training runs into tables and figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ambig.report.build import ReportError, build_report

EXIT_REFUSED = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: input directories and an optional output directory."""
    parser = argparse.ArgumentParser(
        prog="python -m ambig.report",
        description="Aggregate training runs into the paper's tables and figures.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, help="directories searched for runs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory, must not exist (default: <first dir>/report/<YYYY-mm-dd_HH-MM-SS>)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the report, print its Markdown and where it went; exit 2 when it cannot be made."""
    args = parse_args(argv)
    try:
        report = build_report(args.dirs, args.out)
    except ReportError as err:
        print(f"ambig.report: {err}", file=sys.stderr)
        return EXIT_REFUSED
    print(report.markdown)
    print(f"Report written to {report.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
