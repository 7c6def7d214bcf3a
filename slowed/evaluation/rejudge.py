"""``slowed-eval judge``: re-judge the saved generations of a safety run with another judge, no regeneration.

Input: an lm-eval ``--log_samples`` file ``samples_<task>_<timestamp>.jsonl`` of ``slowed_safety`` (or
``slowed_safety_keywords``), or the generations file the judge filter saves before judging. Output: a new
results JSON in lm-eval's layout (``results.<task>`` with ``safety_ratio,<filter>``,
``judge_unknown_rate,<filter>`` and their stderrs, under the same filter name as the run), so ``report`` and
``check`` read it like any run. It also records ``slowed_judges.<task>`` (the judge's ``describe()``, label
counts) and ``slowed_rejudge`` (source file, agreement with the verdicts logged in the samples). The model
provenance (``model_name``, ``config``) is copied from the run's ``results_<timestamp>.json`` beside the
samples when present, with the task's dataset size (``n-samples.original``; None without that file, so
``check`` then needs ``--allow-limit``). ``--output`` / ``--output-samples`` may not be the samples file or
the run's results file. Exit status 0, or 2 when the input, an output path or the judge cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slowed.evaluation.files import read_samples, run_results_file, task_of
from slowed.evaluation.results import METRIC_SOURCES, ResultsError, load_results, refuse_overwrite
from slowed.jsonio import write_json, write_jsonl

DEFAULT_TASK, DEFAULT_FILTER = "slowed_safety", "judge"


class RejudgeError(ValueError):
    """The samples file, the options or the judge cannot be used; the message names which and why."""


def logged_labels(samples: Sequence[Mapping[str, Any]]) -> list[str] | None:
    """Verdict labels logged by the run's judge filter (``filtered_resps = [[label, raw]]``), if all present."""
    labels = []
    for sample in samples:
        filtered = sample.get("filtered_resps")
        if not (isinstance(filtered, list) and filtered and isinstance(filtered[0], list) and filtered[0]):
            return None
        labels.append(str(filtered[0][0]))
    return labels


def _read_run_results(path: Path | None) -> dict[str, Any] | None:
    """The run's results dict for provenance, or None when absent or unusable (provenance is optional)."""
    if path is None:
        return None
    try:
        return load_results(path)
    except (ResultsError, OSError):
        return None


def dataset_size(task: str, run_results: Mapping[str, Any] | None) -> int | None:
    """The number of documents ``task`` has (``n-samples.original`` of the run's results), or None when the
    run's results are not beside the samples: a generations file alone cannot tell whether the run was
    ``--limit``-ed, so ``slowed-eval check`` then needs ``--allow-limit``."""
    counts = (run_results or {}).get("n-samples", {}).get(task)
    original = counts.get("original") if isinstance(counts, Mapping) else None
    return original if isinstance(original, int) and not isinstance(original, bool) else None


def _mean_and_stderr(values: Sequence[float]) -> tuple[float, float | str]:
    """lm-eval's ``mean`` and ``mean_stderr`` (sample std / sqrt(n)); ``"N/A"`` below two samples, as lm-eval."""
    from lm_eval.api.metrics import mean, mean_stderr

    return mean(values), (mean_stderr(values) if len(values) > 1 else "N/A")


def build_results(
    task: str,
    filter_name: str,
    labels: Sequence[str],
    summary: Mapping[str, Any],
    source: Path,
    run_results: Mapping[str, Any] | None,
    agreement: float | None,
) -> dict[str, Any]:
    """A results dict in lm-eval's layout for one re-judged safety task; ``summary`` is ``judge_samples``'s."""
    from slowed.evaluation.safety import SAFETY_METRICS, label_metrics

    per_doc = [label_metrics(label) for label in labels]
    entry: dict[str, Any] = {"name": task, "alias": task, "sample_len": len(labels)}
    for metric in SAFETY_METRICS:
        value, stderr = _mean_and_stderr([values[metric] for values in per_doc])
        entry[f"{metric},{filter_name}"] = value
        entry[f"{metric}_stderr,{filter_name}"] = stderr
    provenance = (
        {
            key: run_results[key]
            for key in ("model_name", "model_name_sanitized", "config")
            if key in run_results
        }
        if run_results
        else {}
    )
    return {
        "results": {task: entry},
        "groups": {},
        "group_subtasks": {},
        "versions": {task: (run_results or {}).get("versions", {}).get(task, 1.0)},
        "n-shot": {task: 0},
        "higher_is_better": {
            task: {metric: METRIC_SOURCES[metric].higher_is_better for metric in SAFETY_METRICS}
        },
        "n-samples": {task: {"original": dataset_size(task, run_results), "effective": len(labels)}},
        **provenance,
        "slowed_judges": {
            task: {"judge": dict(summary["judge"]), "n": summary["n"], "counts": dict(summary["counts"])}
        },
        "slowed_rejudge": {"source_samples": str(source), "agreement_with_logged_verdicts": agreement},
        "date": datetime.now(timezone.utc).timestamp(),
    }


def rejudge(
    samples_path: str | Path,
    output: str | Path,
    judge: str | None = None,
    task: str | None = None,
    output_samples: str | Path | None = None,
) -> dict[str, Any]:
    """Re-judge ``samples_path`` with ``judge`` (a ``load_judge`` spec; None = $SLOWED_JUDGE or the default),
    write the results JSON to ``output`` (and the re-judged samples to ``output_samples``) atomically, and
    return the results dict."""
    from slowed.evaluation.safety import judge_samples, label_metrics
    from slowed.judges import load_judge

    samples_path = Path(samples_path)
    if not samples_path.is_file():
        raise RejudgeError(f"--samples {samples_path}: file not found (pass a samples_slowed_safety_*.jsonl)")
    task = task or task_of(samples_path) or DEFAULT_TASK
    run_results_path = run_results_file(samples_path)
    try:
        refuse_overwrite(
            {"--output": output, "--output-samples": output_samples},
            [path for path in (samples_path, run_results_path) if path is not None],
        )
    except ResultsError as error:
        raise RejudgeError(str(error)) from error
    try:
        samples = read_samples(samples_path)
    except (ValueError, UnicodeDecodeError) as error:
        raise RejudgeError(f"--samples {samples_path}: {error}") from error
    if not samples:
        raise RejudgeError(f"--samples {samples_path}: no samples in the file")
    filter_name = str(samples[0].get("filter") or DEFAULT_FILTER)
    try:
        judge_model = load_judge(judge)
    except (ValueError, OSError, ImportError) as error:
        raise RejudgeError(f"--judge {judge or '(from $SLOWED_JUDGE)'}: {error}") from error
    try:
        verdicts, summary = judge_samples(samples, judge_model)
    except ValueError as error:
        raise RejudgeError(f"--samples {samples_path}: {error}") from error
    labels = [verdict.label for verdict in verdicts]
    logged = logged_labels(samples)
    agreement = sum(a == b for a, b in zip(labels, logged, strict=True)) / len(labels) if logged else None
    run_results = _read_run_results(run_results_path)
    results = build_results(task, filter_name, labels, summary, samples_path, run_results, agreement)
    if output_samples is not None:
        rejudged = [
            {
                **sample,
                "filtered_resps": [[verdict.label, verdict.raw]],
                "filter": filter_name,
                **label_metrics(verdict.label),
            }
            for sample, verdict in zip(samples, verdicts, strict=True)
        ]
        write_jsonl(output_samples, rejudged)
    write_json(output, results)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slowed-eval judge",
        description="Re-judge the generations of a slowed_safety --log_samples file with another judge.",
    )
    parser.add_argument(
        "--samples", required=True, help="samples_slowed_safety_<timestamp>.jsonl (or *_generations.jsonl)"
    )
    parser.add_argument(
        "--judge",
        help="judge spec: a preset, 'keywords', 'walledeval:<Class>' or a local guard model "
        "(with SLOWED_JUDGE_TEMPLATE); default $SLOWED_JUDGE, else walledguard-c",
    )
    parser.add_argument("--output", required=True, help="results JSON to write (lm-eval layout)")
    parser.add_argument("--output-samples", help="also write the samples with the new verdicts (JSONL)")
    parser.add_argument("--task", help="task name for the results (default: from the samples file name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``slowed-eval judge``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        results = rejudge(args.samples, args.output, args.judge, args.task, args.output_samples)
    except (RejudgeError, OSError) as error:
        print(f"slowed-eval judge: error: {error}", file=sys.stderr)
        return 2
    [(task, entry)] = results["results"].items()
    judge = results["slowed_judges"][task]
    metrics = ", ".join(
        f"{key} = {value:.4f}" for key, value in entry.items() if "," in key and "_stderr" not in key
    )
    print(f"{task}: {metrics} over {entry['sample_len']} samples; judge {judge['judge']}")
    agreement = results["slowed_rejudge"]["agreement_with_logged_verdicts"]
    if agreement is not None:
        print(f"agreement with the verdicts logged in {args.samples}: {agreement:.2%}")
    print(f"wrote {args.output}")
    return 0
