"""The evaluation file formats, in one place: samples, saved generations and judge sidecars (no lm-eval import).

- samples: lm-eval's ``--log_samples`` file ``samples_<task>_<timestamp>.jsonl``, one JSON object per line with
  ``doc_id``, ``doc`` and ``resps`` (``[[generation, ...]]``);
- generations: what a judge filter saves before judging, in the same layout, as
  ``<generations dir>/<task>_<stamp>_generations.jsonl``;
- judge sidecars: ``<task>_<stamp>_judge.json`` (the judge's ``describe()``, label counts, the generations file)
  or ``<task>_<stamp>_judge_failed.json`` beside them, read back by `slowed.evaluation.records`.

The stamp is ``<UTC time to the microsecond>Z_<pid>`` (`run_stamp`). The generations dir is
$SLOWED_GENERATIONS_DIR (``slowed-eval`` sets it to ``<output_path>/slowed-generations``), else a private folder
(mode 0700) made once per process under ``<tempdir>/slowed-<uid>``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from slowed.jsonio import read_jsonl, write_json, write_jsonl

GENERATIONS_DIR_ENV = "SLOWED_GENERATIONS_DIR"
SAMPLES_NAME = re.compile(r"^samples_(?P<task>.+)_(?P<timestamp>\d{4}-\d{2}-\d{2}T[\d.\-]+)\.jsonl$")
#: `<task>_<run_stamp()>_generations.jsonl` (`generations_file_name`).
GENERATIONS_NAME = re.compile(r"^(?P<task>.+)_(?P<stamp>\d{8}T\d{12}Z_\d+)_generations\.jsonl$")
#: `<task>_<stamp>_judge.json` / `_judge_failed.json` (`judge_sidecar_name`).
JUDGE_SIDECAR_NAME = re.compile(
    r"^(?P<task>.+)_(?P<stamp>\d{8}T\d{12}Z_(?P<pid>\d+))_judge(?P<failed>_failed)?\.json$"
)
logger = logging.getLogger("lm_eval.slowed")


class GenerationsDirError(OSError):
    """The generations folder cannot be created or written; the message names the variable and the fix."""


class SampleLayoutError(ValueError):
    """A sample lacks the prompt or the generation the judge needs."""


def run_stamp() -> str:
    """`<UTC time to the microsecond>Z_<pid>`: names one judge-filter run's generations and judge files."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}_{os.getpid()}"


def generations_file_name(task: str, stamp: str) -> str:
    """The judge filter's generations file name for ``task`` (parsed back by :data:`GENERATIONS_NAME`)."""
    return f"{task}_{stamp}_generations.jsonl"


def judge_sidecar_name(task: str, stamp: str, failed: bool = False) -> str:
    """The judge sidecar file name for ``task`` (parsed back by :data:`JUDGE_SIDECAR_NAME`)."""
    return f"{task}_{stamp}_judge{'_failed' if failed else ''}.json"


def task_of(path: Path) -> str | None:
    """The task name in an lm-eval samples file name or a judge-filter generations file name."""
    match = SAMPLES_NAME.match(path.name) or GENERATIONS_NAME.match(path.name)
    return match["task"] if match else None


def run_results_file(samples_path: Path) -> Path | None:
    """``results_<timestamp>.json`` written by the same lm-eval run as ``samples_<task>_<timestamp>.jsonl``."""
    match = SAMPLES_NAME.match(samples_path.name)
    if not match:
        return None
    candidate = samples_path.with_name(f"results_{match['timestamp']}.json")
    return candidate if candidate.is_file() else None


def generations_dir() -> Path:
    """$SLOWED_GENERATIONS_DIR, else this process's private folder (`_private_generations_dir`)."""
    configured = os.environ.get(GENERATIONS_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else _private_generations_dir()


@functools.cache
def _private_generations_dir() -> Path:
    """A fresh 0700 folder under `<tempdir>/slowed-<uid>` (itself 0700 and ours), made once per process."""
    base = Path(tempfile.gettempdir()) / f"slowed-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    base.mkdir(mode=0o700, exist_ok=True)
    info = base.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise GenerationsDirError(
            f"{base} exists but is not a directory owned by this user; remove it or set {GENERATIONS_DIR_ENV}"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        base.chmod(0o700)
    folder = Path(tempfile.mkdtemp(prefix="generations-", dir=base))
    logger.info(
        "saved generations of the safety tasks go to %s (set %s to choose)", folder, GENERATIONS_DIR_ENV
    )
    return folder


def check_generations_dir() -> Path:
    """Create the generations folder and prove it writable (a probe file, removed); returns it.

    Raises GenerationsDirError naming $SLOWED_GENERATIONS_DIR and the fix."""
    folder = generations_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        where = f"{GENERATIONS_DIR_ENV}={os.environ.get(GENERATIONS_DIR_ENV)!r}"
        if not os.environ.get(GENERATIONS_DIR_ENV, "").strip():
            where = "the default private folder"
        raise GenerationsDirError(
            f"the safety judge's generations folder {folder} ({where}) is not writable: "
            f"{type(error).__name__}: {error}. Set {GENERATIONS_DIR_ENV} to a folder you can write to."
        ) from error
    return folder


def generation_samples(docs: Sequence[Any], responses: Sequence[str]) -> list[dict[str, Any]]:
    """One sample per doc in the samples layout: ``{"doc_id", "doc", "resps": [[response]]}``."""
    return [
        {"doc_id": index, "doc": doc, "resps": [[response]]}
        for index, (doc, response) in enumerate(zip(docs, responses, strict=True))
    ]


def write_generations(folder: Path, task: str, stamp: str, samples: Sequence[Mapping[str, Any]]) -> Path:
    """Save samples as ``<folder>/<task>_<stamp>_generations.jsonl`` (atomic); returns the path."""
    return write_jsonl(folder / generations_file_name(task, stamp), samples)


def write_judge_sidecar(
    folder: Path, task: str, stamp: str, record: Mapping[str, Any], failed: bool = False
) -> Path:
    """Write a judge record as its sidecar ``<task>_<stamp>_judge[_failed].json`` (atomic); returns the path."""
    return write_json(folder / judge_sidecar_name(task, stamp, failed), record)


def judge_sidecars(folder: Path | None) -> set[Path]:
    """Judge sidecar files in the generations folder (empty when it does not exist)."""
    if folder is None or not folder.is_dir():
        return set()
    return {path for path in folder.iterdir() if JUDGE_SIDECAR_NAME.match(path.name)}


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL of samples (lm-eval `--log_samples` file or a judge filter's generations file)."""
    return read_jsonl(path)


def sample_prompt_response(sample: Mapping[str, Any]) -> tuple[str, str]:
    """(prompt, first generation) of one lm-eval `--log_samples` line or one generations-file line."""
    doc = sample.get("doc")
    if not isinstance(doc, Mapping) or not isinstance(doc.get("prompt"), str):
        fields = list(doc) if isinstance(doc, Mapping) else list(sample)
        raise SampleLayoutError(f"doc {sample.get('doc_id')} has no string field 'prompt' (fields: {fields})")
    resps = sample.get("resps")
    if not (isinstance(resps, list) and resps and isinstance(resps[0], list) and resps[0]):
        raise SampleLayoutError(
            f"sample {sample.get('doc_id')}: expected resps as [[generation, ...]], got {resps!r:.80}"
        )
    return doc["prompt"], str(resps[0][0])
