"""Reading lm-eval results JSON files and turning them into the paper's named metrics.

lm-eval writes ``<output_path>/<model>/results_<timestamp>.json`` with per-task and per-group entries
``{"<metric>,<filter>": value, "<metric>_stderr,<filter>": stderr, "alias": ...}`` under ``"results"``
(groups also under ``"groups"``) and each group's children under ``"group_subtasks"``. All values here
are fractions in [0, 1]; a value outside it makes the file unusable (:class:`ResultsError`).

A canonical metric is read from the first of its source tasks that is *present* in the file; a later
task is used only when the earlier ones are absent altogether, so a guard-judged task whose score is NaN
is never replaced by the keyword smoke test, and the metrics that share a source list (``safety_ratio``,
``judge_unknown_rate``) always come from the same task. A present metric whose value is NaN or null is
kept as NaN with the reason (:class:`Metric`); callers that gate on it refuse it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from slowed.jsonio import read_json


class ResultsError(ValueError):
    """A results file or a request about it that cannot be used (missing, malformed, metric absent)."""


class MetricSource(NamedTuple):
    """Where a canonical metric comes from: the first of ``tasks`` present in the results, ``metric`` key."""

    tasks: tuple[str, ...]
    metric: str
    higher_is_better: bool


#: Canonical metric name -> its source. `safety_ratio` prefers the guard-judged task over the keyword one.
METRIC_SOURCES: dict[str, MetricSource] = {
    "safety_ratio": MetricSource(("slowed_safety", "slowed_safety_keywords"), "safety_ratio", True),
    "judge_unknown_rate": MetricSource(
        ("slowed_safety", "slowed_safety_keywords"), "judge_unknown_rate", False
    ),
    "id_bbh": MetricSource(("slowed_bbh",), "exact_match", True),
    "ood_bbsub": MetricSource(("slowed_bbsub",), "exact_match", True),
    "ood_agieval": MetricSource(("slowed_agieval",), "exact_match", True),
    "ood_arc_easy": MetricSource(("slowed_arc_easy",), "exact_match", True),
    "ood_arc_challenge": MetricSource(("slowed_arc_challenge",), "exact_match", True),
    "overrefusal_rate": MetricSource(("slowed_xstest_safe",), "overrefusal_rate", False),
    "unsafe_refusal_rate": MetricSource(("slowed_xstest_unsafe",), "unsafe_refusal_rate", True),
}
OOD_METRICS: tuple[str, ...] = ("ood_bbsub", "ood_agieval", "ood_arc_easy", "ood_arc_challenge")
#: Every canonical metric in report order (`ood_avg` = plain mean of the four OOD benchmarks).
METRIC_NAMES: tuple[str, ...] = (
    "safety_ratio",
    "id_bbh",
    *OOD_METRICS,
    "ood_avg",
    "judge_unknown_rate",
    "overrefusal_rate",
    "unsafe_refusal_rate",
)
HIGHER_IS_BETTER: dict[str, bool] = {
    **{name: source.higher_is_better for name, source in METRIC_SOURCES.items()},
    "ood_avg": True,
}
#: The name lm-eval gives a results file: ``results_`` + ``datetime.now().isoformat()`` with ``:`` -> ``-``.
LM_EVAL_RESULTS_NAME = re.compile(r"^results_\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(\.\d+)?\.json$")


@dataclass(frozen=True)
class Metric:
    """One canonical metric of a results file: ``value`` (a fraction, NaN when unusable), the ``task`` it was
    read from, the ``judge`` recorded for that task (``None`` when the task has no judge record) and
    ``problem`` (why the value cannot be used, e.g. "not finite"; ``None`` when it can)."""

    name: str
    value: float
    task: str
    judge: str | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    @property
    def source(self) -> str:
        """``task`` plus the judge when one is recorded, e.g. ``slowed_safety (judge: refusal_keywords)``."""
        return f"{self.task} (judge: {self.judge})" if self.judge else self.task


@dataclass(frozen=True)
class Coverage:
    """How much of its data a run scored: ``limit`` (lm-eval's ``config.limit``, None when unset), ``scored``
    and ``total`` documents summed over the tasks of ``n-samples`` (``total`` None when a task's size is
    unknown) and ``short_tasks``: tasks that scored fewer documents than they have, or an unknown number."""

    limit: float | None
    scored: int
    total: int | None
    short_tasks: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Every task scored all its documents (a ``--limit`` at or above every task's size is complete);
        a ``--limit`` run without ``n-samples`` is not."""
        return not self.short_tasks and (self.limit is None or self.total is not None)

    def describe(self) -> str:
        """E.g. ``limit 12: 12/520 docs`` or ``all 520 docs``."""
        total = "?" if self.total is None else str(self.total)
        if self.complete:
            return f"all {total} docs"
        limit = "" if self.limit is None else f"limit {self.limit:g}: "
        return f"{limit}{self.scored}/{total} docs"


def load_results(path: str | Path) -> dict[str, Any]:
    """Read one lm-eval results JSON file and check its structure (:func:`check_structure`);
    :class:`ResultsError` names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file not found: {path} (pass a results_<timestamp>.json or its folder)")
    try:
        data = read_json(path)
    except ValueError as error:  # not JSON, or not UTF-8
        raise ResultsError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsError(
            f'{path} is not an lm-eval results file: no "results" object at the top level '
            "(use the results_<timestamp>.json written by --output_path, not a samples_*.jsonl)"
        )
    try:
        check_structure(data)
    except ResultsError as error:
        raise ResultsError(f"{path}: {error}") from error
    return data


def check_structure(data: Mapping[str, Any]) -> None:
    """Raise :class:`ResultsError` unless ``data`` has lm-eval's layout where slowed reads it: ``results`` and
    ``groups`` map names to objects, ``group_subtasks`` maps names to lists of names, ``n-samples`` maps names
    to ``{"original", "effective"}``, ``config`` and ``slowed_judges`` are objects."""
    if not isinstance(data.get("results"), Mapping):
        raise ResultsError('not an lm-eval results dict: no "results" mapping')
    for section in ("results", "groups", "n-samples", "slowed_judges"):
        entries = data.get(section, {})
        if not isinstance(entries, Mapping) or not all(isinstance(v, Mapping) for v in entries.values()):
            raise ResultsError(f'malformed results: "{section}" must map task names to objects')
    subtasks = data.get("group_subtasks", {})
    if not isinstance(subtasks, Mapping) or not all(
        isinstance(children, list) and all(isinstance(child, str) for child in children)
        for children in subtasks.values()
    ):
        raise ResultsError('malformed results: "group_subtasks" must map group names to lists of task names')
    if not isinstance(data.get("config", {}), Mapping):
        raise ResultsError('malformed results: "config" must be an object')


def find_results_files(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file; for a folder, the lm-eval results file of each sub-folder.

    Only names lm-eval writes (``results_<ISO timestamp>.json``, :data:`LM_EVAL_RESULTS_NAME`) count, so
    e.g. a ``results_summary.json`` beside them is ignored. A folder holding several runs is ambiguous and
    refused (:class:`ResultsError` listing them): pass the file of the run you mean. Folders are listed
    in path order.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ResultsError(f"results path not found: {path}")
    runs: dict[Path, list[Path]] = {}
    for found in sorted(path.rglob("results_*.json")):
        if LM_EVAL_RESULTS_NAME.match(found.name):
            runs.setdefault(found.parent, []).append(found)
    if not runs:
        raise ResultsError(
            f"no lm-eval results_<timestamp>.json under {path} (was lm-eval run with --output_path {path}?)"
        )
    ambiguous = [files for files in runs.values() if len(files) > 1]
    if ambiguous:
        listing = "\n  ".join(str(found) for files in ambiguous for found in files)
        raise ResultsError(
            f"{path} holds several runs in one folder; pass the results file you mean:\n  {listing}"
        )
    return [files[0] for _, files in sorted(runs.items())]


def _present(data: Mapping[str, Any], task: str) -> bool:
    return task in data["results"] or task in data.get("groups", {}) or task in data.get("group_subtasks", {})


def _entry_value(data: Mapping[str, Any], task: str, metric: str) -> tuple[bool, Any]:
    """(found, value) of ``metric`` in a task's entry, under its single filter."""
    entry = data["results"].get(task) or data.get("groups", {}).get(task) or {}
    by_filter = {
        key.split(",", 1)[1]: value
        for key, value in entry.items()
        if "," in key and key.split(",", 1)[0] == metric
    }
    if len(by_filter) > 1:
        raise ResultsError(
            f"task {task!r} reports {metric!r} under several filters {sorted(by_filter)}; "
            "cannot tell which one is the score"
        )
    return (True, next(iter(by_filter.values()))) if by_filter else (False, None)


def _fraction(task: str, metric: str, value: Any) -> float:
    """``value`` as a float: NaN for null / NaN / inf; ResultsError for a non-number or a value outside [0, 1]."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsError(f"task {task!r}: {metric!r} is {value!r}, not a number")
    if math.isfinite(value) and not 0.0 <= value <= 1.0:
        raise ResultsError(
            f"task {task!r}: {metric!r} = {value!r} is outside [0, 1]; slowed metrics are fractions "
            "(was the file edited or written in percent?)"
        )
    return float(value) if math.isfinite(value) else math.nan


def _task_metric(
    data: Mapping[str, Any], task: str, metric: str, parents: tuple[str, ...] = ()
) -> float | None:
    """``metric`` of a present task or group as a fraction (NaN when not finite); ``None`` when the task does
    not report it. A group needs every child listed in ``group_subtasks`` scored (ResultsError naming the
    missing ones); it keeps lm-eval's own aggregate when it has one, else takes the unweighted mean of its
    children (recursively). ``parents``: the groups above ``task``, to refuse a cycle."""
    if task in parents:
        raise ResultsError(f'malformed results: "group_subtasks" nests {task!r} inside itself')
    children = data.get("group_subtasks", {}).get(task, [])
    child_values = {
        child: _task_metric(data, child, metric, (*parents, task)) if _present(data, child) else None
        for child in children
    }
    missing = [child for child, value in child_values.items() if value is None]
    if missing:
        raise ResultsError(
            f"group {task!r} lacks {metric!r} for its subtasks {', '.join(missing)}; a group score needs all "
            f"{len(children)} subtasks scored (rerun the group)"
        )
    found, value = _entry_value(data, task, metric)
    if found:
        return _fraction(task, metric, value)
    if child_values:
        return math.fsum(child_values.values()) / len(child_values)
    return None


def judge_name(data: Mapping[str, Any], task: str) -> str | None:
    """A short name of the judge recorded for ``task`` in ``slowed_judges``: the guard's model, else the
    WalledEval judge's name, else the judge's kind (e.g. ``refusal_keywords``); ``failed`` for a judge that
    failed; None when nothing is recorded."""
    record = data.get("slowed_judges", {}).get(task)
    if record is None:
        return None
    if record.get("status") == "failed":
        return "failed"
    judge = record.get("judge")
    if not isinstance(judge, Mapping):
        return "unnamed"
    return str(judge.get("model") or judge.get("name") or judge.get("kind") or "unnamed")


def read_metrics(results: Mapping[str, Any]) -> dict[str, Metric]:
    """Every canonical metric present in an lm-eval results dict, in :data:`METRIC_NAMES` order.

    Absent benchmarks are missing from the dict; a present one whose value is null / NaN has value NaN and
    ``problem`` "not finite". `ood_avg` is the plain mean of the four OOD benchmarks, present only when all
    four are (its problem is theirs). Raises :class:`ResultsError` on a malformed structure, a value outside
    [0, 1], a non-number, or a group with unscored subtasks.
    """
    check_structure(results)
    metrics: dict[str, Metric] = {}
    for name, source in METRIC_SOURCES.items():
        task = next((task for task in source.tasks if _present(results, task)), None)
        if task is None:
            continue
        value = _task_metric(results, task, source.metric)
        if value is None:
            continue
        problem = (
            None if math.isfinite(value) else f"not finite (task {task!r} reports {source.metric} = {value})"
        )
        metrics[name] = Metric(name, value, task, judge_name(results, task), problem)
    if all(name in metrics for name in OOD_METRICS):
        parts = [metrics[name] for name in OOD_METRICS]
        problems = [f"{part.name}: {part.problem}" for part in parts if part.problem]
        value = math.fsum(part.value for part in parts) / len(parts)
        metrics["ood_avg"] = Metric(
            "ood_avg", value, "mean of " + ", ".join(p.task for p in parts), None, "; ".join(problems) or None
        )
    return {name: metrics[name] for name in METRIC_NAMES if name in metrics}


def metrics_from_results(results: Mapping[str, Any]) -> dict[str, float]:
    """The canonical metrics present in an lm-eval results dict (see :func:`read_metrics`), as fractions.

    Raises :class:`ResultsError` when a present metric is not finite (e.g. its judge failed), naming the task:
    use :func:`read_metrics` to get the others anyway.
    """
    metrics = read_metrics(results)
    unusable = [f"{metric.name}: {metric.problem}" for metric in metrics.values() if not metric.usable]
    if unusable:
        raise ResultsError("unusable metrics: " + "; ".join(unusable))
    return {name: metric.value for name, metric in metrics.items()}


def read_metrics_loaded(path: str | Path, data: Mapping[str, Any]) -> dict[str, Metric]:
    """:func:`read_metrics` of ``data`` read from ``path`` (:func:`load_results`), errors naming it."""
    try:
        return read_metrics(data)
    except ResultsError as error:
        raise ResultsError(f"{path}: {error}") from error


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def coverage(data: Mapping[str, Any]) -> Coverage:
    """The run's :class:`Coverage` from ``config.limit`` and ``n-samples`` (``{"original", "effective"}``)."""
    limit = data.get("config", {}).get("limit")
    limit = float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else None
    counts = data.get("n-samples", {})
    scored, total, short = 0, (0 if counts else None), []
    for task, count in sorted(counts.items()):
        effective, original = count.get("effective"), count.get("original")
        scored += effective if _count(effective) else 0
        if not (_count(effective) and _count(original)):
            short.append(task)
            total = None
        elif effective < original:
            short.append(task)
        if total is not None and _count(original):
            total += original
    return Coverage(limit, scored, total, tuple(short))


def output_folder(output_path: str | Path) -> Path:
    """The folder lm-eval writes into for ``--output_path``: the parent of a ``.json`` path, else itself."""
    output_path = Path(output_path)
    return output_path.parent if output_path.suffix == ".json" else output_path


def refuse_overwrite(outputs: Mapping[str, str | Path | None], inputs: Iterable[str | Path]) -> None:
    """Raise :class:`ResultsError` when an output path (``{option: path}``; None = not requested) is one of
    ``inputs`` (same resolved path, or the same file through a link) or another output's path."""
    seen: dict[Path, str] = {}
    input_paths = [Path(path) for path in inputs]
    for option, output in outputs.items():
        if output is None:
            continue
        resolved = Path(output).expanduser().resolve()
        for source in input_paths:
            if _same_file(resolved, source):
                raise ResultsError(
                    f"{option} {output} is the input file {source}: writing it would destroy the input; "
                    "choose another output path"
                )
        if resolved in seen:
            raise ResultsError(f"{option} {output} and {seen[resolved]} name the same file; choose two paths")
        seen[resolved] = f"{option} {output}"


def _same_file(output: Path, source: Path) -> bool:
    if output == source.expanduser().resolve():
        return True
    try:
        return output.exists() and source.exists() and output.samefile(source)
    except OSError:
        return False


def missing_metric_message(path: str | Path, name: str, present: Iterable[str]) -> str:
    """A clear 'metric absent' message naming the file, the metric and what is there."""
    source = METRIC_SOURCES.get(name)
    where = f" (from task {' or '.join(source.tasks)})" if source else " (needs all four OOD benchmarks)"
    return (
        f"metric {name!r}{where} is absent from {path}; present: {', '.join(present) or 'none'}. "
        "Run the tasks that produce it or drop the threshold."
    )
