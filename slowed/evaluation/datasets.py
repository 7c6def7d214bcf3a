"""Dataset loaders for the lm-eval tasks (``custom_dataset: !function slowed.evaluation.datasets.<fn>``).

lm-eval 0.4.13 calls a task's ``custom_dataset`` with the ``--metadata`` keys (merged over the YAML
``metadata`` and the ``--model_args``) plus the YAML ``dataset_kwargs`` as keyword arguments, so each
loader takes ``subset`` (from ``dataset_kwargs``), ``data_dir`` (from ``--metadata``) and ignores the
rest. Every loader returns a ``DatasetDict`` with one ``test`` split.

Data source: the Hugging Face hub by default; a local directory in the ``../shared/data`` layout when
``--metadata '{"data_dir": DIR}'`` is given or the environment variable ``SLOWED_DATA_DIR`` is set
(``data_dir`` wins). Local files are read with the standard library, so nothing depends on the
working directory or writes a cache.

Reasoning rows have two columns: ``question`` (the user message exactly as in training,
``slowed.prompting.user_message(text)["content"]``) and ``target`` (the gold answer: "(B)" for
multiple choice, the BBH target string, or the MATH answer). Multiple-choice questions from the hub
are formatted like the local (CasCoD) ARC files, "Question: ...\\nOptions:\\n(A) ...", so both sources
give the same prompts. AdvBench rows have one column, ``prompt``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from slowed.prompting import user_message

DATA_DIR_ENV = "SLOWED_DATA_DIR"
HELDOUT_ENV = "SLOWED_BBH_HELDOUT"

BBH_TASKS = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
ARC_FILES = {"ARC-Easy": "ARC-Easy-Test.json", "ARC-Challenge": "ARC-Challenge-Test.json"}
AGIEVAL_SUBSETS = (
    "aqua-rat",
    "gaokao-english",
    "lsat-ar",
    "lsat-lr",
    "lsat-rc",
    "math",
    "sat-en",
    "sat-en-without-passage",
    "sat-math",
)
AGIEVAL_CLOZE_SUBSETS = frozenset({"math"})
# BB-Sub approximation: multiple-choice BIG-bench tasks that are not part of BBH (the paper's CasCoD
# BB-Sub file, a random 100-per-task subset of BIG-bench, is not public in a usable form).
BBSUB_TASKS = (
    "anachronisms",
    "code_line_description",
    "conceptual_combinations",
    "emoji_movie",
    "known_unknowns",
    "logic_grid_puzzle",
    "logical_fallacy_detection",
    "strategyqa",
)
BBSUB_ROWS_PER_TASK = 100

HUB_BBH = "SaylorTwift/bbh"
HUB_ARC = "allenai/ai2_arc"
HUB_AGIEVAL = "hails/agieval-{subset}"
HUB_BIGBENCH = "tasksource/bigbench"
HUB_ADVBENCH = "walledai/AdvBench"

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_AGIEVAL_OPTION_PREFIX = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])\s*[.．)])\s*")
_BIGBENCH_CHOICE_LINE = re.compile(r"^\s*choice:\s")


# ----------------------------------------------------------------------------- data source


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path, str] | None:
    """The local data directory and where it came from ("--metadata data_dir" or the env variable).

    None means "use the hub". An empty ``data_dir`` counts as not given.
    """
    if data_dir not in (None, ""):
        return Path(data_dir).expanduser(), "--metadata data_dir"
    from_env = os.environ.get(DATA_DIR_ENV, "")
    if from_env:
        return Path(from_env).expanduser(), f"the environment variable {DATA_DIR_ENV}"
    return None


def _local_file(source: tuple[Path, str], relative: str, hub_id: str) -> Path:
    root, origin = source
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the local data directory {root} (set by {origin}) has no '{relative}'. "
            f"Put the file there (layout: slowed/lm_eval_tasks/reasoning/README.md), point {origin} at a "
            f"directory that has it, or unset it to read the hub dataset '{hub_id}'."
        )
    return path


def _load_hub(path: str, name: str | None, split: str) -> Dataset:
    import datasets

    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as error:
        raise RuntimeError(
            f"could not load the hub dataset '{path}' (config {name!r}, split {split!r}): {error}. "
            f'Offline? Set {DATA_DIR_ENV}=DIR or --metadata \'{{"data_dir": "DIR"}}\' to read local copies.'
        ) from error


def _test_split(rows: Iterable[Mapping[str, Any]]) -> DatasetDict:
    return DatasetDict({"test": Dataset.from_list(list(rows))})


def _reasoning_row(question: str, target: str) -> dict[str, str]:
    return {"question": user_message(question)["content"], "target": target.strip()}


def _field(row: Mapping[str, Any], field: str, where: str, kinds: tuple[type, ...] = (str,)) -> Any:
    if not isinstance(row, Mapping) or field not in row:
        raise ValueError(
            f"{where}: missing field '{field}' (got {sorted(row) if isinstance(row, Mapping) else row!r})"
        )
    value = row[field]
    if not isinstance(value, kinds):
        raise ValueError(
            f"{where}: field '{field}' must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}"
        )
    return value


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from error
    return rows


def _check_subset(subset: str, allowed: Iterable[str], family: str) -> None:
    if subset not in allowed:
        raise ValueError(f"unknown {family} subset {subset!r}; expected one of: {', '.join(allowed)}")


# ----------------------------------------------------------------------------- formatting


def format_multiple_choice(
    question: str, options: Sequence[tuple[str, str]], passage: str | None = None
) -> str:
    """ "[passage\\n]Question: q\\nOptions:\\n(A) first\\n(B) second" (labels as given, texts stripped)."""
    head = f"{passage.strip()}\n" if passage and passage.strip() else ""
    body = "".join(f"\n({label}) {option.strip()}" for label, option in options)
    return f"{head}Question: {question.strip()}\nOptions:{body}"


def arc_hub_row(row: Mapping[str, Any], where: str) -> dict[str, str]:
    """An ``allenai/ai2_arc`` row (question, choices.text/label, answerKey) as a reasoning row."""
    choices = _field(row, "choices", where, (Mapping,))
    labels, texts = list(choices.get("label", [])), list(choices.get("text", []))
    answer = _field(row, "answerKey", where)
    if len(labels) != len(texts) or answer not in labels:
        raise ValueError(f"{where}: choices {labels} do not match texts {texts} or answerKey {answer!r}")
    question = format_multiple_choice(_field(row, "question", where), list(zip(labels, texts, strict=True)))
    return _reasoning_row(question, f"({answer})")


def _agieval_options(options: Sequence[str], where: str) -> list[tuple[str, str]]:
    """AGIEval option strings ("(A)text", "  A. text") as (letter, text), checking the letters' order."""
    parsed = []
    for index, option in enumerate(options):
        letter = _LETTERS[index]
        match = _AGIEVAL_OPTION_PREFIX.match(option)
        if not match or (match.group(1) or match.group(2)) != letter:
            raise ValueError(f"{where}: option {index} {option!r} does not start with the label {letter}")
        parsed.append((letter, option[match.end() :].strip()))
    return parsed


def _agieval_row(
    subset: str, passage: str | None, question: str, options: Sequence[str] | None, target: str, where: str
) -> dict[str, str]:
    if subset in AGIEVAL_CLOZE_SUBSETS:
        prefix = f"{passage.strip()}\n" if passage and passage.strip() else ""
        return _reasoning_row(f"{prefix}Question: {question.strip()}", target)
    return _reasoning_row(format_multiple_choice(question, _agieval_options(options, where), passage), target)


def agieval_local_row(row: Mapping[str, Any], subset: str, where: str) -> dict[str, str]:
    """A row of the AGIEval repository's jsonl (passage, question, options, label, answer)."""
    passage = _field(row, "passage", where, (str, type(None))) if "passage" in row else None
    question = _field(row, "question", where)
    if subset in AGIEVAL_CLOZE_SUBSETS:
        return _agieval_row(
            subset, passage, question, None, str(_field(row, "answer", where, (str, int))), where
        )
    options = _field(row, "options", where, (list,))
    label = _field(row, "label", where)
    if label not in _LETTERS[: len(options)]:
        raise ValueError(f"{where}: label {label!r} is not one of the {len(options)} option letters")
    return _agieval_row(subset, passage, question, options, f"({label})", where)


def split_agieval_query(query: str, multiple_choice: bool, where: str) -> tuple[str, str]:
    """(passage, question) from a ``hails/agieval-*`` query.

    Those queries are AGIEval's zero-shot prompts: ``passage + "Q: " + question`` followed by
    ``" Answer Choices: ..."`` (multiple choice) and a final ``"\\nA: ..."`` line.
    """
    answer_line = query.rfind("\nA:")
    body = query[:answer_line] if answer_line >= 0 else query
    if multiple_choice:
        cut = body.rfind(" Answer Choices:")
        if cut < 0:
            raise ValueError(f"{where}: query has no ' Answer Choices:' part: {query[:200]!r}")
        body = body[:cut]
    start = body.rfind("Q: ")
    if start < 0:
        raise ValueError(f"{where}: query has no 'Q: ' question: {query[:200]!r}")
    return body[:start], body[start + len("Q: ") :]


def agieval_hub_row(row: Mapping[str, Any], subset: str, where: str) -> dict[str, str]:
    """A ``hails/agieval-<subset>`` row (query, choices, gold; math: query, answer) as a reasoning row."""
    query = _field(row, "query", where)
    if subset in AGIEVAL_CLOZE_SUBSETS:
        passage, question = split_agieval_query(query, multiple_choice=False, where=where)
        return _agieval_row(
            subset, passage, question, None, str(_field(row, "answer", where, (str, int))), where
        )
    passage, question = split_agieval_query(query, multiple_choice=True, where=where)
    options = _field(row, "choices", where, (list,))
    gold = _field(row, "gold", where, (list, int))
    gold = gold if isinstance(gold, list) else [gold]
    if len(gold) != 1 or not 0 <= gold[0] < len(options):
        raise ValueError(f"{where}: gold {gold!r} is not one index into {len(options)} choices")
    return _agieval_row(subset, passage, question, options, f"({_LETTERS[gold[0]]})", where)


def bigbench_hub_row(row: Mapping[str, Any], where: str) -> dict[str, str]:
    """A ``tasksource/bigbench`` multiple-choice row as a reasoning row with lettered options.

    BIG-bench inputs may already list the choices as "  choice: X" lines and end with an "A:" line;
    both are removed before the options are appended in the ARC layout.
    """
    inputs = _field(row, "inputs", where)
    choices = _field(row, "multiple_choice_targets", where, (list,))
    scores = _field(row, "multiple_choice_scores", where, (list,))
    if not choices or len(choices) != len(scores) or len(choices) > len(_LETTERS) or 1 not in scores:
        raise ValueError(f"{where}: needs 1..26 choices with one score 1, got {choices!r} / {scores!r}")
    lines = [line for line in inputs.strip().split("\n") if not _BIGBENCH_CHOICE_LINE.match(line)]
    if lines and lines[-1].strip() == "A:":
        lines.pop()
    stem = "\n".join(lines).strip()
    options = "".join(f"\n({_LETTERS[i]}) {choice.strip()}" for i, choice in enumerate(choices))
    return _reasoning_row(f"{stem}\nOptions:{options}", f"({_LETTERS[scores.index(1)]})")


# ----------------------------------------------------------------------------- loaders


def load_bbh(
    subset: str,
    data_dir: str | os.PathLike | None = None,
    bbh_heldout: str | os.PathLike | None = None,
    **metadata: Any,
) -> DatasetDict:
    """BIG-Bench Hard task ``subset`` (test): ``SaylorTwift/bbh`` or ``<data_dir>/bbh/tasks/<subset>.json``.

    ``bbh_heldout`` (``--metadata`` key, else ``$SLOWED_BBH_HELDOUT``) restricts the task to the rows a
    training run held out (see :func:`heldout_indices`): the BBH teacher rationales are the BBH test rows.
    """
    _check_subset(subset, BBH_TASKS, "BBH")
    source = resolve_data_dir(data_dir)
    if source is None:
        hub = _load_hub(HUB_BBH, subset, "test")
        rows = [_reasoning_row(row["input"], row["target"]) for row in hub]
    else:
        path = _local_file(source, f"bbh/tasks/{subset}.json", f"{HUB_BBH}/{subset}")
        examples = _field(_read_json(path), "examples", str(path), (list,))
        rows = []
        for index, example in enumerate(examples):
            where = f"{path} examples[{index}]"
            rows.append(_reasoning_row(_field(example, "input", where), _field(example, "target", where)))
    keep = heldout_indices(subset, bbh_heldout)
    if keep is not None:
        rows = [row for index, row in enumerate(rows) if index in keep]
    return _test_split(rows)


def heldout_indices(task: str, heldout: str | os.PathLike | None = None) -> set[int] | None:
    """The BBH row indices of ``task`` that a training run held out, or None to evaluate every row.

    ``heldout`` (else ``$SLOWED_BBH_HELDOUT``) is a training run's ``slowed_run.json`` (its
    ``data.held_out_index_by_task``, written by ``recipes/slowed_sft.py``) or a JSON object
    ``{task: [index, ...]}``. Indices are 0-based positions in the BBH task file, as in the teacher files.
    """
    if heldout in (None, ""):
        heldout = os.environ.get(HELDOUT_ENV, "") or None
    if heldout is None:
        return None
    path = Path(heldout).expanduser()
    data = _read_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), dict):
        data = data["data"].get("held_out_index_by_task")
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ValueError(
            f"{path}: bbh_heldout must be a slowed_run.json with data.held_out_index_by_task, or a JSON object "
            "{task: [index, ...]}."
        )
    if not data.get(task):
        raise ValueError(
            f"{path} holds no held-out rows for BBH task {task!r} (tasks present: {sorted(data) or 'none'}): "
            "train with --test_fraction > 0, or evaluate without bbh_heldout / $SLOWED_BBH_HELDOUT."
        )
    return {int(index) for index in data[task]}


def load_arc(subset: str, data_dir: str | os.PathLike | None = None, **metadata: Any) -> DatasetDict:
    """ARC test set ``subset`` ("ARC-Easy" / "ARC-Challenge"): hub or ``<data_dir>/arc/<subset>-Test.json``."""
    _check_subset(subset, ARC_FILES, "ARC")
    source = resolve_data_dir(data_dir)
    if source is None:
        hub = _load_hub(HUB_ARC, subset, "test")
        return _test_split(arc_hub_row(row, f"{HUB_ARC}/{subset} row {i}") for i, row in enumerate(hub))
    path = _local_file(source, f"arc/{ARC_FILES[subset]}", f"{HUB_ARC}/{subset}")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {{'input', 'target'}} objects")
    rows = []
    for index, example in enumerate(data):
        where = f"{path} item {index}"
        rows.append(_reasoning_row(_field(example, "input", where), _field(example, "target", where)))
    return _test_split(rows)


def load_agieval(subset: str, data_dir: str | os.PathLike | None = None, **metadata: Any) -> DatasetDict:
    """AGIEval English subset (test): ``hails/agieval-<subset>`` or ``<data_dir>/agieval/<subset>.jsonl``."""
    _check_subset(subset, AGIEVAL_SUBSETS, "AGIEval")
    source = resolve_data_dir(data_dir)
    hub_id = HUB_AGIEVAL.format(subset=subset)
    if source is None:
        hub = _load_hub(hub_id, None, "test")
        return _test_split(agieval_hub_row(row, subset, f"{hub_id} row {i}") for i, row in enumerate(hub))
    path = _local_file(source, f"agieval/{subset}.jsonl", hub_id)
    return _test_split(agieval_local_row(row, subset, where) for where, row in _read_jsonl(path))


def load_bbsub(subset: str, data_dir: str | os.PathLike | None = None, **metadata: Any) -> DatasetDict:
    """BB-Sub task ``subset``: hub ``tasksource/bigbench`` or ``<data_dir>/bbsub/<subset>.jsonl``.

    Hub: the first ``BBSUB_ROWS_PER_TASK`` rows of the validation split, then of the train split
    (``tasksource/bigbench`` has no test split). Local: every ``{"input", "target"}`` row of the file,
    ``input`` formatted like the ARC files and ``target`` the option label, e.g. "(B)".
    """
    _check_subset(subset, BBSUB_TASKS, "BB-Sub")
    source = resolve_data_dir(data_dir)
    if source is None:
        rows: list[dict[str, str]] = []
        for split in ("validation", "train"):
            hub = _load_hub(HUB_BIGBENCH, subset, split)
            take = min(len(hub), BBSUB_ROWS_PER_TASK - len(rows))
            where = f"{HUB_BIGBENCH}/{subset} {split} row"
            rows += [bigbench_hub_row(hub[i], f"{where} {i}") for i in range(take)]
        return _test_split(rows)
    path = _local_file(source, f"bbsub/{subset}.jsonl", f"{HUB_BIGBENCH}/{subset}")
    rows = []
    for where, row in _read_jsonl(path):
        rows.append(_reasoning_row(_field(row, "input", where), _field(row, "target", where)))
    return _test_split(rows)


def load_advbench(data_dir: str | os.PathLike | None = None, **metadata: Any) -> DatasetDict:
    """AdvBench harmful behaviours (520 prompts) as a ``prompt`` column in a ``test`` split.

    Hub ``walledai/AdvBench`` (column ``prompt``) or ``<data_dir>/advbench/harmful_behaviors.csv``
    (column ``goal``).
    """
    source = resolve_data_dir(data_dir)
    if source is None:
        hub = _load_hub(HUB_ADVBENCH, None, "train")
        return _test_split(
            {"prompt": _field(row, "prompt", f"{HUB_ADVBENCH} row {i}")} for i, row in enumerate(hub)
        )
    path = _local_file(source, "advbench/harmful_behaviors.csv", HUB_ADVBENCH)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if "goal" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: expected a CSV header with a 'goal' column, got {reader.fieldnames}")
        prompts = [{"prompt": row["goal"]} for row in reader]
    return _test_split(prompts)
