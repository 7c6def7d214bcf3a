"""``slowed-eval check``: gate a results file on metric thresholds and on drops against a baseline.

Exit status: 0 every check passes, 1 at least one regression, 2 unusable input (missing or malformed file,
metric absent, malformed threshold). Thresholds are fractions (``0.6``) or percentages (``60%``).
A "drop" is measured in the metric's better direction: ``baseline - current`` for scores,
``current - baseline`` for ``judge_unknown_rate`` (lower is better).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from slowed.atomic import write_atomic
from slowed.evaluation.results import (
    HIGHER_IS_BETTER,
    METRIC_NAMES,
    ResultsError,
    find_results_files,
    metrics_from_file,
    missing_metric_message,
)

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
    """A check's result; ``baseline`` only for ``max-drop``."""

    threshold: Threshold
    value: float
    baseline: float | None
    passed: bool

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
    metrics: Mapping[str, float], thresholds: Sequence[Threshold], baseline: Mapping[str, float] | None
) -> list[Outcome]:
    """Evaluate every threshold; metrics must already be present (see :func:`missing_metrics`)."""
    outcomes = []
    for threshold in thresholds:
        value = metrics[threshold.metric]
        if threshold.kind == "min":
            outcomes.append(Outcome(threshold, value, None, value >= threshold.limit - TOLERANCE))
        elif threshold.kind == "max":
            outcomes.append(Outcome(threshold, value, None, value <= threshold.limit + TOLERANCE))
        else:
            reference = baseline[threshold.metric]
            passed = drop(threshold.metric, value, reference) <= threshold.limit + TOLERANCE
            outcomes.append(Outcome(threshold, value, reference, passed))
    return outcomes


def format_table(outcomes: Sequence[Outcome]) -> str:
    """A fixed-width pass/fail table, one row per check."""
    header = f"{'check':<32} {'value':>8} {'baseline':>9} {'limit':>8}  result"
    rows = [header, "-" * len(header)]
    for outcome in outcomes:
        baseline = f"{outcome.baseline:.4f}" if outcome.baseline is not None else "-"
        result = "PASS" if outcome.passed else "FAIL"
        rows.append(
            f"{outcome.name:<32} {outcome.value:>8.4f} {baseline:>9} {outcome.threshold.limit:>8.4f}  {result}"
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
        if outcome.passed:
            ET.SubElement(case, "system-out").text = outcome.message
        else:
            ET.SubElement(case, "failure", message=outcome.message, type="regression").text = outcome.message
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slowed-eval check",
        description="Gate an lm-eval results file on slowed metrics. Exit 0 pass, 1 regression, 2 unusable input.",
    )
    parser.add_argument("results", help="results_<timestamp>.json (or its folder: the newest file is used)")
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
    return parser


def _single_results_file(path: str) -> Path:
    found = find_results_files(path)
    if len(found) > 1:
        raise ResultsError(f"{path} holds several runs ({', '.join(map(str, found))}); pass one results file")
    return found[0]


def _prepare(args: argparse.Namespace) -> tuple[Path, list[Outcome]]:
    thresholds = [parse_threshold(spec, kind) for kind in ("min", "max") for spec in getattr(args, kind)]
    thresholds += [parse_threshold(spec, "max-drop") for spec in args.max_drop]
    if not thresholds:
        raise ResultsError("no checks requested: give at least one --min, --max or --max-drop")
    if args.max_drop and not args.baseline:
        raise ResultsError("--max-drop needs --baseline BASELINE_RESULTS.json")
    if args.baseline and not args.max_drop:
        raise ResultsError("--baseline given without --max-drop METRIC=VALUE: nothing to compare")
    results_path = _single_results_file(args.results)
    metrics = metrics_from_file(results_path)
    for threshold in thresholds:
        if threshold.metric not in metrics:
            raise ResultsError(missing_metric_message(results_path, threshold.metric, metrics))
    baseline = None
    if args.baseline:
        baseline_path = _single_results_file(args.baseline)
        baseline = metrics_from_file(baseline_path)
        for threshold in thresholds:
            if threshold.kind == "max-drop" and threshold.metric not in baseline:
                raise ResultsError(missing_metric_message(baseline_path, threshold.metric, baseline))
    return results_path, run_checks(metrics, thresholds, baseline)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``slowed-eval check``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        results_path, outcomes = _prepare(args)
    except ResultsError as error:
        print(f"slowed-eval check: error: {error}", file=sys.stderr)
        return EXIT_UNUSABLE
    print(format_table(outcomes))
    failed = [outcome for outcome in outcomes if not outcome.passed]
    for outcome in failed:
        print(f"REGRESSION: {outcome.message}")
    print(f"{len(outcomes) - len(failed)}/{len(outcomes)} checks passed for {results_path}")
    if args.junit:
        try:
            write_atomic(args.junit, junit_xml(outcomes, results_path))
        except OSError as error:
            print(f"slowed-eval check: error: cannot write --junit {args.junit}: {error}", file=sys.stderr)
            return EXIT_UNUSABLE
    return EXIT_REGRESSION if failed else EXIT_PASS
