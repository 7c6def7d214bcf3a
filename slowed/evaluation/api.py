"""Python entry: ``evaluate(...)`` = ``lm_eval.simple_evaluate`` with the slowed tasks, data folder and judge.

lm-eval is imported on the first call, so importing this module (and ``slowed.evaluation``) stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slowed.evaluation.records import judge_records_since, slowed_records, snapshot
from slowed.evaluation.results import metrics_from_results
from slowed.evaluation.tasks import IncludePath, task_manager
from slowed.models import resolve_model_args

__all__ = ["evaluate", "metrics_from_results"]


@contextmanager
def _environment(overrides: Mapping[str, str | None]) -> Iterator[None]:
    """Set the non-None ``overrides`` in ``os.environ`` for the block, then restore the previous values."""
    saved = {name: os.environ.get(name) for name, value in overrides.items() if value is not None}
    try:
        for name in saved:
            os.environ[name] = str(overrides[name])
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def evaluate(
    model: Any = "hf",
    model_args: str | dict[str, Any] | None = None,
    tasks: str | Sequence[str] = ("slowed",),
    data_dir: str | Path | None = None,
    judge: str | None = None,
    judge_template: str | None = None,
    include_path: IncludePath = None,
    metadata: dict[str, Any] | None = None,
    **simple_evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Run lm-eval on the slowed tasks (and any other task name) and return its results dict.

    Args:
        model, model_args: as ``lm_eval.simple_evaluate`` (e.g. ``"hf"``,
            ``"pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,peft=out/checkpoint-500"``); an embedded alias
            (``pretrained=embedded:smollm2-135m``) is resolved to its local directory as in ``slowed-eval``.
        tasks: task or group names; default the whole ``slowed`` group (safety + ID + OOD).
        data_dir: local dataset folder (the layout of ``../shared/data``), passed to the task loaders as
            ``metadata["data_dir"]`` (like ``--metadata '{"data_dir": ...}'``); ``None`` leaves it to
            ``SLOWED_DATA_DIR`` or the Hugging Face hub.
        judge, judge_template: the safety judge (``SLOWED_JUDGE`` / ``SLOWED_JUDGE_TEMPLATE``: a preset
            name, ``walledeval:<Class>``, ``keywords`` or a local model path), set for this call only.
        include_path: extra task folders, kept beside ours (a task of the same name in them wins).
        metadata: task metadata; merged over ``model_args`` as lm-eval's CLI does.
        simple_evaluate_kwargs: every other ``simple_evaluate`` argument (``limit``, ``apply_chat_template``,
            ``gen_kwargs``, ``log_samples``, ``evaluation_tracker``, ...).

    Returns:
        lm-eval's results dict (``results``, ``groups``, ``configs``, ..., ``samples`` when logged) plus
        ``slowed_judges`` (each judge that ran in this call: description and label counts, from the judge
        files it wrote), ``slowed_training`` (``{"source", "config"}``: the checkpoint's ``slowed_config.json``)
        and ``slowed_data`` (the data folder or "hub", the BBH held-out file); pass it to
        :func:`metrics_from_results` for the paper's metrics.
    """
    from lm_eval import simple_evaluate
    from lm_eval.utils import simple_parse_args_string

    from slowed.evaluation.files import generations_dir

    parsed_model_args = (
        simple_parse_args_string(model_args) if isinstance(model_args, str) else model_args or {}
    )
    resolved = resolve_model_args(parsed_model_args)
    if resolved != parsed_model_args:  # an embedded alias: lm-eval gets its local directory
        model_args = parsed_model_args = resolved
    task_metadata = dict(parsed_model_args) | (metadata or {})
    if data_dir is not None:
        task_metadata["data_dir"] = str(data_dir)
    manager = task_manager(include_path, metadata=task_metadata)
    with _environment({"SLOWED_JUDGE": judge, "SLOWED_JUDGE_TEMPLATE": judge_template}):
        before = snapshot(None, generations_dir())
        results = simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=[tasks] if isinstance(tasks, str) else list(tasks),
            task_manager=manager,
            metadata=task_metadata,
            **simple_evaluate_kwargs,
        )
    if results is None:
        raise RuntimeError(
            "lm_eval.simple_evaluate returned no results (non-zero rank in a distributed run?)"
        )
    judges = judge_records_since(before)
    return {**results, **slowed_records(results, judges, parsed_model_args, task_metadata)}
