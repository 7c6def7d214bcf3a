"""``slowed-eval report``: the paper's table (safety, ID, OOD, OOD average) over one or more results files.

The Markdown table shows percentages with two decimals (as in the paper); the CSV holds the raw fractions.
A folder argument stands for the lm-eval results file (``results_<timestamp>.json``) of each of its
sub-folders; a sub-folder holding several runs is refused (name the files). Rows keep the order given; the
default label is the evaluated model's last path component (the adapter / checkpoint folder, lm-eval's
``model_name``), else the file name, plus the judge for files written by ``slowed-eval judge``.

Every table names the task and judge the safety ratio was read from ("Safety source"), and marks runs that
did not score all their data (lm-eval ``--limit``) in a "Scored" column (``limit 12: 12/520 docs``). A
metric that is present but not finite (its judge failed) shows as ``not finite`` (CSV: ``nan``). Exit 2 on
unusable input (see ``slowed-eval check``) or an output path that is an input; nothing is written then.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slowed.evaluation.results import (
    METRIC_NAMES,
    Coverage,
    Metric,
    ResultsError,
    coverage,
    find_results_files,
    judge_name,
    load_results,
    read_metrics_loaded,
    refuse_overwrite,
)
from slowed.jsonio import write_atomic

COLUMN_TITLES: dict[str, str] = {
    "safety_ratio": "Safety",
    "id_bbh": "ID: BBH",
    "ood_bbsub": "OOD: BB-Sub",
    "ood_agieval": "OOD: AGIEval",
    "ood_arc_easy": "OOD: ARC-E",
    "ood_arc_challenge": "OOD: ARC-C",
    "ood_avg": "OOD avg",
    "judge_unknown_rate": "Judge unknown",
    "overrefusal_rate": "XSTest over-refusal",
    "unsafe_refusal_rate": "XSTest unsafe refusal",
}
NOT_FINITE = "not finite"


@dataclass(frozen=True)
class ReportRow:
    """One results file: its label, path, canonical metrics (fractions, with source task and judge) and
    how much of its data the run scored."""

    label: str
    path: Path
    metrics: dict[str, Metric]
    scored: Coverage

    @property
    def safety_source(self) -> str:
        """Task and judge of the safety ratio, e.g. ``slowed_safety (judge: refusal_keywords)``; "" if absent."""
        metric = self.metrics.get("safety_ratio")
        if metric is None:
            return ""
        return metric.source if metric.judge else f"{metric.task} (judge: not recorded)"


def input_files(paths: Sequence[str | Path]) -> list[Path]:
    """The results files the arguments stand for (folders expanded, see :func:`find_results_files`)."""
    return [found for path in paths for found in find_results_files(path)]


def collect_rows(files: Sequence[Path], labels: Sequence[str] | None = None) -> list[ReportRow]:
    """Read every results file; ``labels`` must match the number of files."""
    if labels is not None and len(labels) != len(files):
        listing = "\n  ".join(map(str, files))
        raise ResultsError(
            f"--labels has {len(labels)} labels but {len(files)} results files were found:\n  {listing}"
        )
    rows = []
    for index, path in enumerate(files):
        data = load_results(path)
        metrics = read_metrics_loaded(path, data)
        if not metrics:
            tasks = ", ".join(sorted(data["results"])[:8]) or "none"
            raise ResultsError(
                f"{path} holds no slowed metrics (tasks: {tasks}); run lm-eval with --tasks slowed"
            )
        model_name = data.get("model_name")
        default_label = Path(str(model_name)).name if model_name else path.stem
        if "slowed_rejudge" in data:
            names = [judge_name(data, task) for task in data.get("slowed_judges", {})]
            default_label += f" (judge: {', '.join(map(str, names))})"
        label = labels[index] if labels is not None else default_label
        rows.append(ReportRow(label, path, metrics, coverage(data)))
    return rows


def present_columns(rows: Sequence[ReportRow]) -> list[str]:
    """Canonical metrics present in at least one row, in report order."""
    return [name for name in METRIC_NAMES if any(name in row.metrics for row in rows)]


def _percent(metric: Metric | None) -> str:
    if metric is None:
        return "–"
    return f"{100 * metric.value:.2f}" if metric.usable else NOT_FINITE


def markdown_table(rows: Sequence[ReportRow]) -> str:
    """A GitHub Markdown table, values in percent with two decimals, ``–`` where a row lacks a metric,
    ``not finite`` where it is NaN; then "Safety source" (when a row has a safety ratio) and "Scored" (when a
    row did not score all its data)."""
    columns = present_columns(rows)
    extras = []
    if "safety_ratio" in columns:
        extras.append(("Safety source", lambda row: row.safety_source or "–"))
    if any(not row.scored.complete for row in rows):
        extras.append(("Scored", lambda row: row.scored.describe()))
    titles = [*(COLUMN_TITLES[name] for name in columns), *(title for title, _ in extras)]
    lines = [
        "| " + " | ".join(["Model", *titles]) + " |",
        "|" + "---|" + "---:|" * len(columns) + "---|" * len(extras),
    ]
    for row in rows:
        cells = [_percent(row.metrics.get(name)) for name in columns]
        cells += [cell(row) for _, cell in extras]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[ReportRow]) -> str:
    """CSV with columns ``label, path``, every canonical metric (fractions, full precision; empty = absent,
    ``nan`` = not finite), ``safety_source``, ``complete`` (``true`` when the run scored all its data) and
    ``scored`` (e.g. ``limit 12: 12/520 docs``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", "path", *METRIC_NAMES, "safety_source", "complete", "scored"])
    for row in rows:
        values = [repr(row.metrics[name].value) if name in row.metrics else "" for name in METRIC_NAMES]
        complete = "true" if row.scored.complete else "false"
        writer.writerow(
            [row.label, str(row.path), *values, row.safety_source, complete, row.scored.describe()]
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
            (x, 100 * row.metrics[name].value)
            for x, row in zip(positions, rows, strict=True)
            if name in row.metrics and row.metrics[name].usable
        ]
        if not points:
            continue
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
        files = input_files(args.results)
        outputs_requested = {"--markdown": args.markdown, "--csv": args.csv, "--plot": args.plot}
        refuse_overwrite(outputs_requested, files)
        rows = collect_rows(files, args.labels)
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
