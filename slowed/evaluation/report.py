"""``slowed-eval report``: the paper's table (safety, ID, OOD, OOD average) over one or more results files.

The Markdown table shows percentages with two decimals (as in the paper); the CSV holds the raw fractions.
A folder argument stands for the newest ``results_*.json`` of each of its sub-folders. Rows keep the order
given; the default label is the evaluated model's last path component (the adapter / checkpoint folder,
lm-eval's ``model_name``), else the file name, plus the judge for files written by ``slowed-eval judge``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slowed.atomic import write_atomic
from slowed.evaluation.results import (
    METRIC_NAMES,
    ResultsError,
    find_results_files,
    load_results,
    metrics_from_loaded,
)

COLUMN_TITLES: dict[str, str] = {
    "safety_ratio": "Safety",
    "id_bbh": "ID: BBH",
    "ood_bbsub": "OOD: BB-Sub",
    "ood_agieval": "OOD: AGIEval",
    "ood_arc_easy": "OOD: ARC-E",
    "ood_arc_challenge": "OOD: ARC-C",
    "ood_avg": "OOD avg",
    "judge_unknown_rate": "Judge unknown",
}


@dataclass(frozen=True)
class ReportRow:
    """One results file: its label, path and canonical metrics (fractions)."""

    label: str
    path: Path
    metrics: dict[str, float]


def collect_rows(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[ReportRow]:
    """Read every results file (folders expanded); ``labels`` must match the number of files found."""
    files = [found for path in paths for found in find_results_files(path)]
    if labels is not None and len(labels) != len(files):
        listing = "\n  ".join(map(str, files))
        raise ResultsError(
            f"--labels has {len(labels)} labels but {len(files)} results files were found:\n  {listing}"
        )
    rows = []
    for index, path in enumerate(files):
        data = load_results(path)
        metrics = metrics_from_loaded(path, data)
        if not metrics:
            tasks = ", ".join(sorted(data["results"])[:8]) or "none"
            raise ResultsError(
                f"{path} holds no slowed metrics (tasks: {tasks}); run lm-eval with --tasks slowed"
            )
        model_name = data.get("model_name")
        default_label = Path(str(model_name)).name if model_name else path.stem
        if "slowed_rejudge" in data:
            judges = [record.get("judge", {}) for record in data.get("slowed_judges", {}).values()]
            names = [str(judge.get("model") or judge.get("kind")) for judge in judges]
            default_label += f" (judge: {', '.join(names)})"
        rows.append(ReportRow(labels[index] if labels is not None else default_label, path, metrics))
    return rows


def present_columns(rows: Sequence[ReportRow]) -> list[str]:
    """Canonical metrics present in at least one row, in report order."""
    return [name for name in METRIC_NAMES if any(name in row.metrics for row in rows)]


def markdown_table(rows: Sequence[ReportRow]) -> str:
    """A GitHub Markdown table, values in percent with two decimals, ``–`` where a row lacks a metric."""
    columns = present_columns(rows)
    lines = [
        "| " + " | ".join(["Model", *(COLUMN_TITLES[name] for name in columns)]) + " |",
        "|" + "---|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = [f"{100 * row.metrics[name]:.2f}" if name in row.metrics else "–" for name in columns]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[ReportRow]) -> str:
    """CSV with columns ``label, path`` and every canonical metric (fractions, full precision; empty = absent)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "path", *METRIC_NAMES])
    for row in rows:
        writer.writerow(
            [
                row.label,
                str(row.path),
                *(repr(row.metrics[name]) if name in row.metrics else "" for name in METRIC_NAMES),
            ]
        )
    return buffer.getvalue()


def plot_png(rows: Sequence[ReportRow]) -> bytes:
    """PNG bytes: one line per present metric (percent) across the rows, x = row label in the given order."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ResultsError('--plot needs matplotlib: pip install "slowed[plot]"') from error
    figure = Figure(figsize=(max(7.5, 2.5 + 1.2 * len(rows)), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(rows)))
    for name in present_columns(rows):
        points = [
            (x, 100 * row.metrics[name])
            for x, row in zip(positions, rows, strict=True)
            if name in row.metrics
        ]
        style = "-" if name in ("safety_ratio", "id_bbh", "ood_avg") else ":"
        axes.plot(*zip(*points, strict=True), style, marker="o", label=COLUMN_TITLES[name])
    axes.set_xticks(positions, [row.label for row in rows], rotation=30, ha="right")
    axes.set_ylabel("%")
    axes.set_xlabel("checkpoint / run")
    axes.set_ylim(-2, 102)
    axes.grid(alpha=0.3)
    figure.legend(fontsize="small", loc="outside right upper")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slowed-eval report",
        description="Tabulate slowed metrics (safety ratio, BBH, each OOD benchmark, OOD average) per results file.",
    )
    parser.add_argument("results", nargs="+", help="results_<timestamp>.json files or folders holding them")
    parser.add_argument(
        "--labels", nargs="+", help="one label per results file (default: the model's folder name)"
    )
    parser.add_argument("--markdown", help="write the Markdown table to this file")
    parser.add_argument("--csv", help="write the metrics as CSV (fractions) to this file")
    parser.add_argument("--plot", help="write a PNG plot of the metrics across the results files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``slowed-eval report``; returns 0, or 2 on unusable input."""
    args = build_parser().parse_args(argv)
    try:
        rows = collect_rows(args.results, args.labels)
        table = markdown_table(rows)
        outputs: list[tuple[str, str, str | bytes]] = []
        if args.markdown:
            outputs.append(("--markdown", args.markdown, table))
        if args.csv:
            outputs.append(("--csv", args.csv, csv_text(rows)))
        if args.plot:
            outputs.append(("--plot", args.plot, plot_png(rows)))
        for option, path, content in outputs:
            try:
                write_atomic(path, content)
            except OSError as error:
                raise ResultsError(f"cannot write {option} {path}: {error}") from error
    except ResultsError as error:
        print(f"slowed-eval report: error: {error}", file=sys.stderr)
        return 2
    print(table, end="")
    return 0
