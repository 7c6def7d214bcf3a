"""What slowed adds to the results file of one lm-eval run: ``slowed_judges``, ``slowed_training``, ``slowed_data``.

- ``slowed_judges``: per task, the judge record the task's filter wrote in this run, read from the judge
  sidecar files ``<task>_<stamp>_judge.json`` (or ``_judge_failed.json``, recorded as ``status: failed``)
  that appeared in the generations folder during the run and carry this process's id in their stamp.
- ``slowed_training``: ``{"source": path, "config": {...}}`` from the ``slowed_config.json`` that
  ``SLowEDTrainer`` saves next to every adapter or model (``peft`` folder first, then ``pretrained``); a
  file that is not a JSON object is skipped with a warning, never recorded.
- ``slowed_data``: where the scored rows came from: ``data_dir`` (``--metadata`` / ``--model_args`` key,
  else ``$SLOWED_DATA_DIR``, else ``"hub"``) and the BBH held-out file (``bbh_heldout`` / ``$SLOWED_BBH_HELDOUT``).

After a CLI run only the results file this run wrote is rewritten: the lm-eval-named files under
``--output_path`` that did not exist before the run and whose ``config.model_args`` is this run's. None or
several such files (e.g. concurrent runs into one folder) leave everything untouched, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowed.evaluation.files import JUDGE_SIDECAR_NAME, judge_sidecars
from slowed.evaluation.results import LM_EVAL_RESULTS_NAME, ResultsError, load_results, output_folder
from slowed.jsonio import read_json, write_json

TRAINING_RECORD_NAME = "slowed_config.json"  # slowed.trainer.SLOWED_CONFIG_NAME, without importing TRL
DATA_DIR_ENV, HELDOUT_ENV = "SLOWED_DATA_DIR", "SLOWED_BBH_HELDOUT"  # slowed.evaluation.datasets
logger = logging.getLogger("lm_eval.slowed")


@dataclass(frozen=True)
class RunSnapshot:
    """Files that existed before a run: lm-eval results files its ``--output_path`` can receive and the judge
    sidecars in its generations folder (None when there is none)."""

    results: frozenset[Path]
    sidecars: frozenset[Path]
    generations: Path | None


def results_candidates(output_path: str | Path) -> set[Path]:
    """lm-eval results files ``output_path`` holds: ``<folder>/<model>/results_<timestamp>.json``, or for a
    ``.json`` path ``<parent>/<stem>_<timestamp>.json`` (lm-eval's own naming in both cases)."""
    output_path = Path(output_path)
    folder = output_folder(output_path)
    if folder != output_path:
        stem = re.escape(output_path.stem)
        pattern = re.compile(rf"^{stem}_\d{{4}}-\d{{2}}-\d{{2}}T\d{{2}}-\d{{2}}-\d{{2}}(\.\d+)?\.json$")
        return {path for path in folder.glob(f"{output_path.stem}_*.json") if pattern.match(path.name)}
    return {path for path in folder.glob("*/results_*.json") if LM_EVAL_RESULTS_NAME.match(path.name)}


def snapshot(output_path: str | Path | None, generations: Path | None) -> RunSnapshot:
    """The :class:`RunSnapshot` to take right before a run."""
    results = results_candidates(output_path) if output_path else set()
    return RunSnapshot(frozenset(results), frozenset(judge_sidecars(generations)), generations)


def judge_records_since(before: RunSnapshot, pid: int | None = None) -> dict[str, dict[str, Any]]:
    """Judge records of the sidecars written since ``before`` by process ``pid`` (default: this one), by
    task: the sidecar's content plus ``judge_file``; a failure sidecar gives ``{"status": "failed", ...}``.
    An unreadable sidecar is skipped with a warning."""
    pid = os.getpid() if pid is None else pid
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(judge_sidecars(before.generations) - before.sidecars):
        match = JUDGE_SIDECAR_NAME.match(path.name)
        if int(match["pid"]) != pid:
            continue
        try:
            record = read_json(path)
        except (OSError, ValueError) as error:
            logger.warning("judge record %s is unreadable (%s); not recorded in the results", path, error)
            continue
        if not isinstance(record, dict):
            logger.warning("judge record %s is not a JSON object; not recorded in the results", path)
            continue
        key = "judge_failed_file" if match["failed"] else "judge_file"
        records[match["task"]] = {**record, key: str(path)}
    return records


def training_record_for(model_args: Any) -> dict[str, Any] | None:
    """``{"source": path, "config": {...}}`` from the evaluated checkpoint's ``slowed_config.json`` (``peft``
    folder first, then ``pretrained``); None when neither local folder holds one (e.g. a hub model) or the
    file is not a JSON object (a warning names it)."""
    if not isinstance(model_args, Mapping):
        return None
    for key in ("peft", "pretrained"):
        folder = model_args.get(key)
        candidate = Path(str(folder)).expanduser() / TRAINING_RECORD_NAME if folder else None
        if candidate is None or not candidate.is_file():
            continue
        try:
            record = read_json(candidate)
        except (OSError, ValueError) as error:
            logger.warning(
                "%s is not readable JSON (%s); the training knobs are not recorded", candidate, error
            )
            return None
        if not isinstance(record, dict):
            logger.warning(
                "%s holds a %s, not a JSON object of SLowED knobs; the training knobs are not recorded",
                candidate,
                type(record).__name__,
            )
            return None
        return {"source": str(candidate), "config": record}
    return None


def _absolute(value: Any) -> str:
    return str(Path(str(value)).expanduser().resolve())


def data_record(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Where the task loaders read their rows, resolved as they resolve it: ``data_dir`` (an absolute path,
    or ``"hub"``), ``data_dir_from`` and ``bbh_heldout`` (absolute path or None), ``bbh_heldout_from``.
    ``metadata`` is the task metadata (lm-eval's ``--model_args`` merged with ``--metadata``)."""
    metadata = metadata or {}
    record: dict[str, Any] = {}
    for key, env, default in (("data_dir", DATA_DIR_ENV, "hub"), ("bbh_heldout", HELDOUT_ENV, None)):
        if metadata.get(key) not in (None, ""):
            record[key], record[f"{key}_from"] = _absolute(metadata[key]), f"metadata {key}"
        elif os.environ.get(env, ""):
            record[key], record[f"{key}_from"] = _absolute(os.environ[env]), env
        else:
            record[key], record[f"{key}_from"] = default, None
    return record


def slowed_records(
    results: Mapping[str, Any], judges: Mapping[str, Mapping[str, Any]], model_args: Any, metadata: Any
) -> dict[str, Any]:
    """``slowed_judges`` (the ``judges`` of tasks in ``results``), ``slowed_training`` and ``slowed_data``."""
    records: dict[str, Any] = {
        "slowed_data": data_record(metadata if isinstance(metadata, Mapping) else None)
    }
    tasks = results.get("results", {})
    run_judges = {task: dict(record) for task, record in judges.items() if task in tasks}
    if run_judges:
        records["slowed_judges"] = run_judges
    training = training_record_for(model_args)
    if training is not None:
        records["slowed_training"] = training
    return records


def _jsonable(model_args: Any) -> Any:
    """``model_args`` as the results file holds it (JSON round trip; unset = ``{}``)."""
    return json.loads(json.dumps(model_args or {}, default=str))


def attach_slowed_records(
    before: RunSnapshot, output_path: str | Path, model_args: Any, metadata: Any
) -> Path | None:
    """Add :func:`slowed_records` to the one results file this run wrote under ``output_path`` (new since
    ``before``, lm-eval-named, same ``config.model_args``), atomically; returns it, or None (with a warning)
    when there is not exactly one such file."""
    new = sorted(results_candidates(output_path) - before.results)
    mine = []
    for path in new:
        try:
            data = load_results(path)
        except ResultsError as error:
            logger.warning("not adding slowed records to %s: %s", path, error)
            continue
        if _jsonable(data.get("config", {}).get("model_args")) == _jsonable(model_args):
            mine.append((path, data))
    if len(mine) != 1:
        found = ", ".join(str(path) for path, _ in mine) or "none"
        logger.warning(
            "slowed records (judges, training knobs, data source) not added: expected one new results file of "
            "this run under %s, found %s (another run writing into the same folder?)",
            output_path,
            found,
        )
        return None
    [(path, data)] = mine
    data.update(slowed_records(data, judge_records_since(before), model_args, metadata))
    write_json(path, data)
    return path


def task_metadata(model_args: Any, metadata: Any) -> dict[str, Any]:
    """The task metadata lm-eval's CLI builds: ``--model_args`` (a dict) merged with ``--metadata``."""
    merged = dict(model_args) if isinstance(model_args, Mapping) else {}
    return merged | (dict(metadata) if isinstance(metadata, Mapping) else {})
