"""CLI registration for `alignlab report RUN_DIR [RUN_DIR ...] [--out FILE]` (imports stay light)."""

from __future__ import annotations

import argparse

from alignlab.cli import command


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training output_dir(s) holding metrics.jsonl")
    p.add_argument("--out", default=None,
                   help="HTML file to write (default: RUN_DIR/report.html for one run, report.html here for several)")


@command("report", "Plot every metric of one or more training runs (overlaid) with their configs and timing "
                   "into one offline HTML page.", _report_args)
def _report(args: argparse.Namespace) -> int:
    from alignlab.eval.run_report import write_run_report

    out = args.out if args.out is not None or len(args.runs) == 1 else "report.html"
    path = write_run_report(*args.runs, out=out)
    print(f"report: {path}", flush=True)
    return 0
