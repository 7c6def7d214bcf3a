"""Reading lm-eval results JSON files and turning them into the paper's named metrics.

lm-eval writes ``<output_path>/<model>/results_<timestamp>.json`` with per-task and per-group entries
``{"<metric>,<filter>": value, "<metric>_stderr,<filter>": stderr, "alias": ...}`` under ``"results"``
(groups also under ``"groups"``) and each group's children under ``"group_subtasks"``. All values here
are fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from slowed.atomic import write_atomic

TRAINING_RECORD_NAME = "slowed_config.json"  # slowed.trainer.SLOWED_CONFIG_NAME, without importing TRL


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


def load_results(path: str | Path) -> dict[str, Any]:
    """Read one lm-eval results JSON file; :class:`ResultsError` names the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"results file not found: {path} (pass a results_<timestamp>.json or its folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ResultsError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsError(
            f'{path} is not an lm-eval results file: no "results" object at the top level '
            "(use the results_<timestamp>.json written by --output_path, not a samples_*.jsonl)"
        )
    return data


def find_results_files(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file; for a folder, its newest ``results_*.json`` per sub-folder.

    lm-eval writes one ``results_<ISO timestamp>.json`` per run into ``<output_path>/<model>/``, so the
    newest (lexicographically last) file of each folder is the latest run; folders are listed in path order.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ResultsError(f"results path not found: {path}")
    newest: dict[Path, Path] = {}
    for found in sorted(path.rglob("results_*.json")):
        newest[found.parent] = found
    if not newest:
        raise ResultsError(f"no results_*.json under {path} (was lm-eval run with --output_path {path}?)")
    return [newest[folder] for folder in sorted(newest)]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _task_metric(data: Mapping[str, Any], task: str, metric: str) -> float | None:
    """``metric`` of a task or group, under any single filter; a group without an aggregate gets the
    unweighted mean of its children (recursively). ``None`` when the task is not in the results."""
    entry = data["results"].get(task) or data.get("groups", {}).get(task)
    if entry is not None:
        by_filter = {
            key.split(",", 1)[1]: value
            for key, value in entry.items()
            if "," in key and key.split(",", 1)[0] == metric and _numeric(value)
        }
        if len(by_filter) > 1:
            raise ResultsError(
                f"task {task!r} reports {metric!r} under several filters {sorted(by_filter)}; "
                "cannot tell which one is the score"
            )
        if by_filter:
            return float(next(iter(by_filter.values())))
    children = data.get("group_subtasks", {}).get(task)
    if children:
        values = [_task_metric(data, child, metric) for child in children]
        present = [value for value in values if value is not None]
        if present:
            return math.fsum(present) / len(present)
    return None


def metrics_from_results(results: Mapping[str, Any]) -> dict[str, float]:
    """The canonical metrics present in an lm-eval results dict (see :data:`METRIC_NAMES`), as fractions.

    Absent benchmarks are simply missing from the returned dict; `ood_avg` is the plain mean of the four
    OOD benchmarks and is only present when all four are.
    """
    if not isinstance(results.get("results"), Mapping):
        raise ResultsError('not an lm-eval results dict: no "results" mapping')
    metrics: dict[str, float] = {}
    for name, source in METRIC_SOURCES.items():
        for task in source.tasks:
            value = _task_metric(results, task, source.metric)
            if value is not None:
                metrics[name] = value
                break
    if all(name in metrics for name in OOD_METRICS):
        metrics["ood_avg"] = math.fsum(metrics[name] for name in OOD_METRICS) / len(OOD_METRICS)
    return {name: metrics[name] for name in METRIC_NAMES if name in metrics}


def metrics_from_loaded(path: str | Path, data: Mapping[str, Any]) -> dict[str, float]:
    """:func:`metrics_from_results` of ``data`` read from ``path`` (:func:`load_results`), errors naming it."""
    try:
        return metrics_from_results(data)
    except ResultsError as error:
        raise ResultsError(f"{path}: {error}") from error


def metrics_from_file(path: str | Path) -> dict[str, float]:
    """:func:`metrics_from_results` of one results file, errors naming the file."""
    return metrics_from_loaded(path, load_results(path))


def output_folder(output_path: str | Path) -> Path:
    """The folder lm-eval writes into for ``--output_path``: the parent of a ``.json`` path, else itself."""
    output_path = Path(output_path)
    return output_path.parent if output_path.suffix == ".json" else output_path


def judge_records_for(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The safety judge records (``describe()``, label counts, files) of this process for the tasks in
    ``results`` (see ``slowed.evaluation.safety.recorded_judges``); empty when no judge ran here."""
    safety = sys.modules.get("slowed.evaluation.safety")
    if safety is None:
        return {}
    return {
        task: record
        for task, record in safety.recorded_judges().items()
        if task in results.get("results", {})
    }


def training_record_for(model_args: Any) -> dict[str, Any] | None:
    """The SLowED knobs of the evaluated checkpoint: ``slowed_config.json`` (written by ``SLowEDTrainer``
    next to every saved adapter or model) from the ``peft`` folder, else the ``pretrained`` folder, with its
    path under ``"source"``; None when neither is a local folder holding one (e.g. a plain hub model)."""
    if not isinstance(model_args, Mapping):
        return None
    for key in ("peft", "pretrained"):
        folder = model_args.get(key)
        candidate = Path(str(folder)).expanduser() / TRAINING_RECORD_NAME if folder else None
        if candidate is not None and candidate.is_file():
            try:
                record = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ResultsError(f"{candidate}: not a readable slowed_config.json ({error})") from error
            return {"source": str(candidate), **record}
    return None


def slowed_records_for(results: Mapping[str, Any], model_args: Any) -> dict[str, Any]:
    """What slowed adds to a results file: ``slowed_judges`` (:func:`judge_records_for`) and
    ``slowed_training`` (:func:`training_record_for`), each only when there is something to record."""
    records: dict[str, Any] = {}
    judges = judge_records_for(results)
    if judges:
        records["slowed_judges"] = judges
    training = training_record_for(model_args)
    if training is not None:
        records["slowed_training"] = training
    return records


def attach_slowed_records(output_path: str | Path, since: float, model_args: Any = None) -> list[Path]:
    """Add :func:`slowed_records_for` to the results files lm-eval wrote under ``output_path`` (a folder,
    or a ``.json`` path it suffixes with a timestamp) at or after ``since`` (``time.time()``, less 1 s for
    coarse file-system clocks); rewrites each atomically and returns them."""
    output_path = Path(output_path)
    folder = output_folder(output_path)
    if folder != output_path:
        candidates = folder.glob(f"{output_path.stem}_*.json")
    else:
        candidates = folder.rglob("results_*.json")
    updated = []
    for path in sorted(candidates):
        if path.stat().st_mtime < since - 1.0:
            continue
        data = load_results(path)
        records = slowed_records_for(data, model_args)
        if records:
            data.update(records)
            write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str))
            updated.append(path)
    return updated


def missing_metric_message(path: str | Path, name: str, present: Iterable[str]) -> str:
    """A clear 'metric absent' message naming the file, the metric and what is there."""
    source = METRIC_SOURCES.get(name)
    where = f" (from task {' or '.join(source.tasks)})" if source else " (needs all four OOD benchmarks)"
    return (
        f"metric {name!r}{where} is absent from {path}; present: {', '.join(present) or 'none'}. "
        "Run the tasks that produce it or drop the threshold."
    )
