"""Dataset loaders for the lm-eval tasks (``custom_dataset: !function slowed.evaluation.datasets.<fn>``).

lm-eval 0.4.13 calls a task's ``custom_dataset`` with the ``--metadata`` keys (merged over the YAML
``metadata`` and the ``--model_args``) plus the YAML ``dataset_kwargs`` as keyword arguments. Measured in
a real run: ``version`` (YAML metadata), ``config_source`` (added by lm-eval), every ``--model_args`` key
(``pretrained``, ``peft``, ...), every ``--metadata`` key and the ``dataset_kwargs``. Each loader takes
``subset`` (from ``dataset_kwargs``) and ``data_dir`` (from ``--metadata``); ``load_bbh`` also
``bbh_heldout``. The rest goes through :func:`check_metadata_keys`: a key that looks like a misspelt
slowed key (``bbh_held_out``, ``data-dir``) or a judge option is refused with a "did you mean" (a typo
must not silently turn the held-out filter off); any other key is taken for a model argument (lm-eval
merges ``--model_args`` into the metadata, and ``hf`` forwards unknown ones to ``from_pretrained``) and
is let through with one warning per key unless it is a parameter of lm-eval's ``HFLM``. Every loader
returns a ``DatasetDict`` with one ``test`` split.

Data source: the Hugging Face hub by default; a local directory in the ``../shared/data`` layout when
``--metadata '{"data_dir": DIR}'`` is given or the environment variable ``SLOWED_DATA_DIR`` is set
(``data_dir`` wins). Local files are read with the standard library, so nothing depends on the
working directory or writes a cache. They must be UTF-8 (a byte-order mark is accepted); text fields
must be non-empty, and a bad file or row is reported with the file, the row and the field.

Reasoning rows have two columns: ``question`` (the user message exactly as in training,
``slowed.prompting.user_message(text)["content"]``) and ``target`` (the gold answer: "(B)" for
multiple choice, the BBH target string, or the MATH answer). Multiple-choice questions from the hub
are formatted like the local (CasCoD) ARC files, "Question: ...\\nOptions:\\n(A) ...", so both sources
give the same prompts. AdvBench rows have one column, ``prompt``.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from slowed.evaluation.lm_eval_compat import hflm_parameters
from slowed.jsonio import read_text
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

#: Keys lm-eval 0.4.13 itself passes to every ``custom_dataset`` (measured: the YAML ``metadata: version``
#: and ``config_source``, the YAML file's path).
LM_EVAL_METADATA_KEYS = frozenset({"version", "config_source"})
#: ``--metadata`` keys the slowed loaders read (every loader accepts all of them: metadata is per run).
METADATA_KEYS = ("data_dir", "bbh_heldout")
#: ``dataset_kwargs`` of the slowed task YAMLs (the safety tasks repeat their filter's task and judge so
#: that ``load_advbench`` can check the judge before any generation).
DATASET_KWARGS = ("subset", "safety_filter_task", "safety_filter_judge")
_WARNED_KEYS: set[str] = set()
logger = logging.getLogger("lm_eval.slowed")

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


def local_file(
    source: tuple[Path, str],
    relative: str,
    hub_id: str,
    what: str = "the file there (layouts: the benchmark READMEs under slowed/lm_eval_tasks/reasoning/)",
) -> Path:
    """``<data dir>/<relative>`` of a resolved data folder (`resolve_data_dir`); FileNotFoundError naming the
    folder, where it was set, what to put there (`what`) and the hub dataset read when it is unset."""
    root, origin = source
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the local data directory {root} (set by {origin}) has no '{relative}'. "
            f"Put {what}, point {origin} at a directory that has it, or unset it to read the hub dataset "
            f"'{hub_id}'."
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
    if isinstance(value, str) and not value.strip() and type(None) not in kinds:
        raise ValueError(f"{where}: field '{field}' is empty; fill it in or drop the row")
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
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


def check_metadata_keys(metadata: Mapping[str, Any]) -> None:
    """Refuse metadata keys that look like misspelt slowed keys or judge options; warn once about others.

    ``metadata`` is what a loader received beyond its own parameters. Allowed silently: the slowed keys
    (:data:`METADATA_KEYS`, :data:`DATASET_KWARGS`), lm-eval's own (:data:`LM_EVAL_METADATA_KEYS`) and the
    parameters of lm-eval's ``HFLM`` (model args reach loaders too). A key whose normalised form
    (lower case, "-" as "_") is close to a slowed key (``difflib`` ratio >= 0.6) raises ValueError with
    a "did you mean"; a key mentioning "judge" raises ValueError pointing at $SLOWED_JUDGE. Any other key
    is logged once as a warning (it is probably a model argument) and ignored.
    """
    known = {*METADATA_KEYS, *DATASET_KWARGS, *LM_EVAL_METADATA_KEYS}
    for key in metadata:
        if key in known or key in hflm_parameters():
            continue
        normalised = str(key).strip().lower().replace("-", "_")
        if "judge" in normalised:
            raise ValueError(
                f"--metadata key {key!r}: the safety judge is not set through --metadata (lm-eval filters do "
                "not see it); set the environment variable SLOWED_JUDGE (and SLOWED_JUDGE_TEMPLATE) instead"
            )
        close = difflib.get_close_matches(normalised, METADATA_KEYS, n=1, cutoff=0.6)
        if close:
            raise ValueError(
                f"unknown --metadata key {key!r}: did you mean {close[0]!r}? The slowed tasks read "
                f"{', '.join(METADATA_KEYS)}; a misspelt key would be ignored (e.g. the BBH held-out filter "
                "silently off), so it is refused. Fix the key in --metadata."
            )
        if key not in _WARNED_KEYS:
            _WARNED_KEYS.add(key)
            logger.warning(
                "metadata key %r is not read by the slowed tasks (they read %s); taken for a model argument "
                "and ignored by the data loaders",
                key,
                ", ".join(METADATA_KEYS),
            )


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
    check_metadata_keys(metadata)
    _check_subset(subset, BBH_TASKS, "BBH")
    source = resolve_data_dir(data_dir)
    if source is None:
        hub = _load_hub(HUB_BBH, subset, "test")
        rows = [_reasoning_row(row["input"], row["target"]) for row in hub]
    else:
        path = local_file(source, f"bbh/tasks/{subset}.json", f"{HUB_BBH}/{subset}")
        examples = _field(_read_json(path), "examples", str(path), (list,))
        rows = []
        for index, example in enumerate(examples):
            where = f"{path} examples[{index}]"
            rows.append(_reasoning_row(_field(example, "input", where), _field(example, "target", where)))
    keep = heldout_indices(subset, bbh_heldout, num_rows=len(rows))
    if keep is not None:
        rows = [row for index, row in enumerate(rows) if index in keep]
    return _test_split(rows)


def heldout_indices(
    task: str, heldout: str | os.PathLike | None = None, num_rows: int | None = None
) -> set[int] | None:
    """The BBH row indices of ``task`` that a training run held out, or None to evaluate every row.

    ``heldout`` (else ``$SLOWED_BBH_HELDOUT``) is a training run's ``slowed_run.json`` (its
    ``data.held_out_index_by_task``, written by ``recipes/slowed_sft.py``) or a JSON object
    ``{task: [index, ...]}``. Indices are 0-based positions in the BBH task file, as in the teacher files:
    each must be a JSON integer (not a float or a boolean) in ``[0, num_rows)``, else ValueError naming
    the file, the task and the value.
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
    for index in data[task]:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(
                f"{path}: held-out index {index!r} of BBH task {task!r} is not an integer; the indices are "
                "0-based row positions in the task file (write them as JSON integers)"
            )
        if num_rows is not None and not 0 <= index < num_rows:
            raise ValueError(
                f"{path}: held-out index {index} of BBH task {task!r} is outside the task's {num_rows} rows "
                f"[0, {num_rows}); was the file written for another version of the BBH data?"
            )
    return set(data[task])


def load_arc(subset: str, data_dir: str | os.PathLike | None = None, **metadata: Any) -> DatasetDict:
    """ARC test set ``subset`` ("ARC-Easy" / "ARC-Challenge"): hub or ``<data_dir>/arc/<subset>-Test.json``."""
    check_metadata_keys(metadata)
    _check_subset(subset, ARC_FILES, "ARC")
    source = resolve_data_dir(data_dir)
    if source is None:
        hub = _load_hub(HUB_ARC, subset, "test")
        return _test_split(arc_hub_row(row, f"{HUB_ARC}/{subset} row {i}") for i, row in enumerate(hub))
    path = local_file(source, f"arc/{ARC_FILES[subset]}", f"{HUB_ARC}/{subset}")
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
    check_metadata_keys(metadata)
    _check_subset(subset, AGIEVAL_SUBSETS, "AGIEval")
    source = resolve_data_dir(data_dir)
    hub_id = HUB_AGIEVAL.format(subset=subset)
    if source is None:
        hub = _load_hub(hub_id, None, "test")
        return _test_split(agieval_hub_row(row, subset, f"{hub_id} row {i}") for i, row in enumerate(hub))
    path = local_file(source, f"agieval/{subset}.jsonl", hub_id)
    return _test_split(agieval_local_row(row, subset, where) for where, row in _read_jsonl(path))


def load_bbsub(subset: str, data_dir: str | os.PathLike | None = None, **metadata: Any) -> DatasetDict:
    """BB-Sub task ``subset``: hub ``tasksource/bigbench`` or ``<data_dir>/bbsub/<subset>.jsonl``.

    Hub: the first ``BBSUB_ROWS_PER_TASK`` rows of the validation split, then of the train split
    (``tasksource/bigbench`` has no test split). Local: every ``{"input", "target"}`` row of the file,
    ``input`` formatted like the ARC files and ``target`` the option label, e.g. "(B)".
    """
    check_metadata_keys(metadata)
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
    path = local_file(source, f"bbsub/{subset}.jsonl", f"{HUB_BIGBENCH}/{subset}")
    rows = []
    for where, row in _read_jsonl(path):
        rows.append(_reasoning_row(_field(row, "input", where), _field(row, "target", where)))
    return _test_split(rows)


def load_advbench(
    data_dir: str | os.PathLike | None = None,
    safety_filter_task: str | None = None,
    safety_filter_judge: str | None = None,
    **metadata: Any,
) -> DatasetDict:
    """AdvBench harmful behaviours (520 prompts) as a ``prompt`` column in a ``test`` split.

    Hub ``walledai/AdvBench`` (column ``prompt``) or ``<data_dir>/advbench/harmful_behaviors.csv``
    (column ``goal``; UTF-8, a byte-order mark accepted). Every prompt must be a non-empty string; a row
    with more or fewer cells than the header (an unquoted comma) is refused, naming the file and line.

    ``safety_filter_task`` / ``safety_filter_judge`` (the safety YAMLs' ``dataset_kwargs``, the same as
    their ``SafetyJudgeFilter``'s ``task`` / ``judge``): when given, the judge setup is checked here
    (:func:`slowed.evaluation.safety.check_judge_setup`), i.e. when lm-eval builds the task, before any
    generation.
    """
    check_metadata_keys(metadata)
    if safety_filter_task is not None:
        from slowed.evaluation.safety import check_judge_setup

        check_judge_setup(safety_filter_task, safety_filter_judge)
    source = resolve_data_dir(data_dir)
    if source is None:
        hub = _load_hub(HUB_ADVBENCH, None, "train")
        return _test_split(
            {"prompt": _field(row, "prompt", f"{HUB_ADVBENCH} row {i}")} for i, row in enumerate(hub)
        )
    path = local_file(source, "advbench/harmful_behaviors.csv", HUB_ADVBENCH)
    return _test_split({"prompt": goal} for goal in read_advbench_csv(path))


def read_advbench_csv(path: Path) -> list[str]:
    """The ``goal`` cells of an AdvBench CSV, checked row by row (see :func:`load_advbench`)."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        header = reader.fieldnames or []
        if "goal" not in header:
            raise ValueError(f"{path}: expected a CSV header with a 'goal' column, got {header or 'nothing'}")
        goals = []
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if None in row or None in row.values():
                cells = len(header) + len(row.get(None, [])) - sum(v is None for v in row.values())
                raise ValueError(
                    f"{where}: {cells} cells for the {len(header)} header columns {header}; quote cells "
                    "that contain commas"
                )
            goals.append(_field(row, "goal", where))
    except csv.Error as error:
        raise ValueError(f"{path} line {reader.line_num}: unreadable CSV ({error})") from error
    if not goals:
        raise ValueError(f"{path}: the CSV has a header but no rows; expected one harmful behaviour per row")
    return goals
