"""Command line of the report: render a results folder to one HTML page, optionally compared with a
baseline folder, and print the comparison, the capability matrix and the model-feature cells as text.

    python -m reports RESULTS_DIR [--baseline OLD_DIR] [--out report.html] [--csv rows.csv]
                      [--json comparison.json] [--text] [--fail-on-regression]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from records.schema import CAPABILITY_FILE, REPORT_FILE, RESULTS_FILE, RUNS_FILE
from reports.capability import format_capability_text
from reports.compare import compare, format_comparison_text
from reports.model import load_results
from reports.tables import format_features_text, format_speedup_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help=f"results folder (holds {RESULTS_FILE}, {RUNS_FILE}, optional {CAPABILITY_FILE})")
    parser.add_argument("--baseline", help="an older results folder to compare against (version regressions)")
    parser.add_argument("--out", help=f"HTML file to write (default: RESULTS_DIR/{REPORT_FILE})")
    parser.add_argument("--title", default="", help="page title")
    parser.add_argument("--csv", help="also write every row as CSV here")
    parser.add_argument("--json", help="with --baseline: write the comparison summary as JSON here")
    parser.add_argument("--text", action="store_true",
                        help="print the capability matrix as text, the cells with model features beside their "
                             "plain twins when the results hold any, and the speed-up summary per workload kind")
    parser.add_argument("--against", metavar="BACKEND",
                        help="with --text: the backend the speed-up summary compares the others with (default: the "
                             "baseline backend the results declare, cuDNN)")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="with --baseline: exit with status 1 when any cell regressed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # matplotlib and jinja2 load only when rendering
    from reports.html import baseline_backend, effective_declarations, render_report, write_csv

    try:
        results = load_results(args.results)
        baseline = load_results(args.baseline) if args.baseline else None
    except FileNotFoundError as error:
        print(f"reports: {error}", file=sys.stderr)
        return 2
    if args.against and args.against not in results.backends:
        print(f"reports: --against {args.against!r} is not a backend of {args.results} "
              f"(its backends: {', '.join(results.backends) or 'none'})", file=sys.stderr)
        return 2
    comparison = compare(baseline, results) if baseline is not None else None
    if comparison is not None:
        print(format_comparison_text(comparison))
        if args.json:
            Path(args.json).write_text(json.dumps(comparison.summary(), indent=1, default=str))
    if args.text:
        print(format_capability_text(results))
        if results.featured.any():
            print(format_features_text(results))
        against = args.against or baseline_backend(effective_declarations(results, None))
        if against:
            print(format_speedup_text(results, against))
    if args.csv:
        print(f"rows: {write_csv(results, args.csv)}", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.results) / REPORT_FILE
    print(f"report: {render_report(results, out, baseline=baseline, title=args.title)}", file=sys.stderr)
    if args.fail_on_regression and comparison is not None and comparison.regressions:
        return 1
    return 0
