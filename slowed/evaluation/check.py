"""``slowed-eval check``: gate a results file on metric thresholds and on drops against a baseline.

Exit status: 0 every check passes, 1 at least one regression, 2 unusable input: a missing or malformed
file, a folder holding several runs, a metric absent or not finite (e.g. its judge failed) or outside
[0, 1], a group with unscored subtasks, a run that did not score all its data (``--limit``) unless
``--allow-limit``, a malformed or repeated threshold, an output path that is an input. On exit 2 nothing
is written. Thresholds are fractions (``0.6``) or percentages (``60%``). A "drop" is measured in the
metric's better direction: ``baseline - current`` for scores, ``current - baseline`` for lower-is-better
metrics (``judge_unknown_rate``). The table names the task each metric was read from and its judge.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slowed.evaluation.results import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    Metric,
    ResultsError,
    coverage,
    find_results_files,
    load_results,
    missing_metric_message,
    read_metrics_loaded,
    refuse_overwrite,
)
from slowed.jsonio import write_atomic

EXIT_PASS, EXIT_REGRESSION, EXIT_UNUSABLE = 0, 1, 2
#: Comparisons forgive this much float rounding (a drop of 0.1 - 0.08 must pass --max-drop M=0.02).
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Threshold:
    """One requested check: ``kind`` is ``min``, ``max`` or ``max-drop``; ``limit`` a fraction."""

    kind: str
    metric: str
    limit: float


@dataclass(frozen=True)
class Outcome:
    """A check's result; ``baseline`` only for ``max-drop``; ``source``: the task (and judge) of the value."""

    threshold: Threshold
    value: float
    baseline: float | None
    passed: bool
    source: str = ""

    @property
    def name(self) -> str:
        return f"{self.threshold.kind} {self.threshold.metric}"

    @property
    def message(self) -> str:
        limit, metric = self.threshold.limit, self.threshold.metric
        if self.threshold.kind == "min":
            return f"{metric} = {self.value:.4f}, required >= {limit:.4f}"
        if self.threshold.kind == "max":
            return f"{metric} = {self.value:.4f}, required <= {limit:.4f}"
        return (
            f"{metric} = {self.value:.4f} vs baseline {self.baseline:.4f}: "
            f"drop {drop(metric, self.value, self.baseline):.4f}, allowed <= {limit:.4f}"
        )


def parse_threshold(spec: str, kind: str) -> Threshold:
    """``"safety_ratio=0.6"`` or ``"safety_ratio=60%"`` -> Threshold; ResultsError naming the option."""
    option = f"--{kind}"
    name, separator, raw = spec.partition("=")
    name, raw = name.strip(), raw.strip()
    if not separator or not name or not raw:
        raise ResultsError(f"{option} {spec!r}: expected METRIC=VALUE, e.g. {option} safety_ratio=0.6")
    if name not in METRIC_NAMES:
        raise ResultsError(
            f"{option} {spec!r}: unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}"
        )
    try:
        limit = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ResultsError(f"{option} {spec!r}: {raw!r} is not a number (write 0.6 or 60%)") from None
    if not 0.0 <= limit <= 1.0:
        raise ResultsError(f"{option} {spec!r}: metrics are fractions in [0, 1]; write 0.6 or 60%, not {raw}")
    return Threshold(kind, name, limit)


def drop(metric: str, value: float, baseline: float) -> float:
    """How much worse ``value`` is than ``baseline`` in ``metric``'s better direction (negative = better)."""
    return baseline - value if HIGHER_IS_BETTER[metric] else value - baseline


def run_checks(
    metrics: Mapping[str, Metric], thresholds: Sequence[Threshold], baseline: Mapping[str, Metric] | None
) -> list[Outcome]:
    """Evaluate every threshold; its metrics must be present and usable (see :func:`usable_metric`)."""
    outcomes = []
    for threshold in thresholds:
        metric = metrics[threshold.metric]
        value = metric.value
        if threshold.kind == "min":
            passed, reference = value >= threshold.limit - TOLERANCE, None
        elif threshold.kind == "max":
            passed, reference = value <= threshold.limit + TOLERANCE, None
        else:
            reference = baseline[threshold.metric].value
            passed = drop(threshold.metric, value, reference) <= threshold.limit + TOLERANCE
        outcomes.append(Outcome(threshold, value, reference, passed, metric.source))
    return outcomes


def format_table(outcomes: Sequence[Outcome]) -> str:
    """A fixed-width pass/fail table, one row per check, with the task (and judge) each value came from."""
    header = f"{'check':<32} {'value':>8} {'baseline':>9} {'limit':>8}  result  source"
    rows = [header, "-" * len(header)]
    for outcome in outcomes:
        baseline = f"{outcome.baseline:.4f}" if outcome.baseline is not None else "-"
        result = "PASS" if outcome.passed else "FAIL"
        rows.append(
            f"{outcome.name:<32} {outcome.value:>8.4f} {baseline:>9} {outcome.threshold.limit:>8.4f}  "
            f"{result:<6}  {outcome.source}"
        )
    return "\n".join(rows)


def junit_xml(outcomes: Sequence[Outcome], results_path: str | Path) -> str:
    """JUnit XML: one ``<testcase>`` per check (``classname`` = the results file), ``<failure>`` on fail."""
    failures = sum(not outcome.passed for outcome in outcomes)
    suites = ET.Element("testsuites", tests=str(len(outcomes)), failures=str(failures), errors="0")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="slowed-eval check",
        tests=str(len(outcomes)),
        failures=str(failures),
        errors="0",
    )
    for outcome in outcomes:
        case = ET.SubElement(suite, "testcase", classname=str(results_path), name=outcome.name)
        text = f"{outcome.message} (from {outcome.source})"
        if outcome.passed:
            ET.SubElement(case, "system-out").text = text
        else:
            ET.SubElement(case, "failure", message=outcome.message, type="regression").text = text
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slowed-eval check",
        description="Gate an lm-eval results file on slowed metrics. Exit 0 pass, 1 regression, 2 unusable input.",
    )
    parser.add_argument(
        "results", help="results_<timestamp>.json (or a folder holding exactly one lm-eval run)"
    )
    metavar = "METRIC=VALUE"
    parser.add_argument("--min", action="append", default=[], metavar=metavar, help="fail if metric < VALUE")
    parser.add_argument("--max", action="append", default=[], metavar=metavar, help="fail if metric > VALUE")
    parser.add_argument("--baseline", help="baseline results file for --max-drop")
    parser.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar=metavar,
        help="fail if metric is worse than baseline by > VALUE",
    )
    parser.add_argument("--junit", help="also write the checks as JUnit XML to this file")
    parser.add_argument(
        "--allow-limit",
        action="store_true",
        help="accept runs that scored only part of their data (lm-eval --limit); refused by default",
    )
    return parser


def _single_results_file(path: str) -> Path:
    found = find_results_files(path)
    if len(found) > 1:
        raise ResultsError(f"{path} holds several runs ({', '.join(map(str, found))}); pass one results file")
    return found[0]


def parse_thresholds(args: argparse.Namespace) -> list[Threshold]:
    """Every ``--min`` / ``--max`` / ``--max-drop``; ResultsError when one is malformed or repeated."""
    thresholds = [parse_threshold(spec, kind) for kind in ("min", "max") for spec in getattr(args, kind)]
    thresholds += [parse_threshold(spec, "max-drop") for spec in args.max_drop]
    seen: set[tuple[str, str]] = set()
    for threshold in thresholds:
        key = (threshold.kind, threshold.metric)
        if key in seen:
            raise ResultsError(
                f"--{threshold.kind} {threshold.metric} is given more than once; keep one threshold per metric"
            )
        seen.add(key)
    if not thresholds:
        raise ResultsError("no checks requested: give at least one --min, --max or --max-drop")
    if args.max_drop and not args.baseline:
        raise ResultsError("--max-drop needs --baseline BASELINE_RESULTS.json")
    if args.baseline and not args.max_drop:
        raise ResultsError("--baseline given without --max-drop METRIC=VALUE: nothing to compare")
    return thresholds


def usable_metrics(
    path: Path, names: Sequence[str], allow_limit: bool, role: str = "results"
) -> dict[str, Metric]:
    """The metrics ``names`` of the results file ``path``, each present and usable, from a run that scored all
    its data (unless ``allow_limit``); ResultsError naming the file, the metric, its task and the fix."""
    data = load_results(path)
    run = coverage(data)
    if not run.complete and not allow_limit:
        short = ", ".join(run.short_tasks[:6]) or "n-samples missing"
        raise ResultsError(
            f"{role} {path} did not score all its data ({run.describe()}; tasks: {short}): a --limit run "
            "cannot gate a release. Rerun without --limit, or pass --allow-limit to check it anyway"
        )
    metrics = read_metrics_loaded(path, data)
    for name in names:
        if name not in metrics:
            raise ResultsError(missing_metric_message(path, name, metrics))
        if not metrics[name].usable:
            raise ResultsError(
                f"{role} {path}: metric {name!r} from task {metrics[name].task!r} is unusable: "
                f"{metrics[name].problem} (a failed judge gives NaN: re-judge with `slowed-eval judge`)"
            )
    return metrics


def _prepare(args: argparse.Namespace) -> tuple[Path, list[Outcome], str]:
    thresholds = parse_thresholds(args)
    results_path = _single_results_file(args.results)
    baseline_path = _single_results_file(args.baseline) if args.baseline else None
    refuse_overwrite({"--junit": args.junit}, [path for path in (results_path, baseline_path) if path])
    metrics = usable_metrics(results_path, [t.metric for t in thresholds], args.allow_limit)
    baseline = None
    if baseline_path is not None:
        drops = [t.metric for t in thresholds if t.kind == "max-drop"]
        baseline = usable_metrics(baseline_path, drops, args.allow_limit, role="baseline")
    return (
        results_path,
        run_checks(metrics, thresholds, baseline),
        coverage(load_results(results_path)).describe(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``slowed-eval check``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        results_path, outcomes, scored = _prepare(args)
    except ResultsError as error:
        print(f"slowed-eval check: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(format_table(outcomes))
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in failed:
        print(f"REGRESSION: {outcome.message}")
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} checks passed for {results_path} ({scored})")
    if args.junit:
        try:
            write_atomic(args.junit, junit_xml(outcomes, results_path))
        except OSError as error:
            print(f"slowed-eval check: error: cannot write --junit {args.junit}: {error}", file=sys.stderr)
            return EXIT_UNUSABLE
    return EXIT_REGRESSION if failed else EXIT_PASS
