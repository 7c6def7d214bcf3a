"""A tiny synthetic data directory in exactly the ``../shared/data`` layout (plus ``bbsub/``), for tests.

Rows are generated, not copied: tests must run where the shared datasets are absent. The task lists are the
library's own (`slowed.evaluation.datasets`: the one list each, from which the task YAMLs are generated). The safety
prompts are harmless placeholders. Every file has ``rows_per_file`` rows; row ``i`` of a
multiple-choice file has the gold option ``(A)``, ``(B)``, ... in turn.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from slowed.evaluation.datasets import AGIEVAL_SUBSETS, BBH_TASKS, BBSUB_TASKS

LETTERS = "ABCD"


def _bbh_example(task: str, i: int) -> dict[str, str]:
    """One BBH-shaped example whose target has the task's real answer format."""
    free_form = {
        "boolean_expressions": (f"not ( {'True' if i % 2 else 'False'} ) is", "False" if i % 2 else "True"),
        "causal_judgement": (f"Did event {i} cause the outcome?\nOptions:\n- Yes\n- No", "Yes"),
        "navigate": (f"Take {i} steps forward. Do you return?\nOptions:\n- Yes\n- No", "No"),
        "web_of_lies": (f"Person {i} tells the truth. Does person {i} tell the truth?", "Yes"),
        "sports_understanding": (f'Is the following sentence plausible? "Player {i} scored."', "yes"),
        "formal_fallacies": (
            f"Argument {i}: all A are B. Is it valid?\nOptions:\n- valid\n- invalid",
            "invalid",
        ),
        "dyck_languages": (f"Complete the sequence {i}: Input: [ ( {{", "} ) ]"),
        "multistep_arithmetic_two": (f"(({i} + 2) * -3) =", str((i + 2) * -3)),
        "object_counting": (f"I have {i + 1} apples and a banana. How many fruits do I have?", str(i + 2)),
        "word_sorting": (
            f"Sort the following words alphabetically: List: zeta alpha mid{i}",
            f"alpha mid{i} zeta",
        ),
    }
    if task in free_form:
        question, target = free_form[task]
        return {"input": question, "target": target}
    options = "\n".join(f"({letter}) option {letter.lower()} of item {i}" for letter in LETTERS)
    return {"input": f"Synthetic {task} question {i}.\nOptions:\n{options}", "target": f"({LETTERS[i % 4]})"}


def _arc_example(i: int, numeric_labels: bool) -> dict[str, str]:
    labels = "1234" if numeric_labels else LETTERS
    options = "\n".join(f"({label}) answer {label} to item {i}" for label in labels)
    return {
        "input": f"Question: Which answer fits item {i}?\nOptions:\n{options}",
        "target": f"({labels[i % 4]})",
    }


def _agieval_row(subset: str, i: int) -> dict:
    if subset == "math":
        return {
            "passage": None,
            "question": f"What is $\\frac{{{i + 1}}}{{2}}$ of 4?",
            "options": None,
            "label": None,
            "answer": str(2 * (i + 1)),
            "other": {"solution": "Multiply."},
        }
    passage = None if subset in {"aqua-rat", "sat-en-without-passage"} else f"Passage {i} of {subset}."
    row = {
        "passage": passage,
        "question": f"Which option is right for {subset} item {i}?",
        "options": [f"({letter})choice {letter} of item {i}" for letter in LETTERS],
        "label": LETTERS[i % 4],
        "other": {"solution": "Because."},
    }
    if subset == "gaokao-english":  # the real file has some options as "  A. text   "
        row["options"][0] = f"     A. choice A of item {i}   "
    if subset not in {"sat-en", "sat-en-without-passage", "sat-math"}:
        row["answer"] = None
    return row


def write_sample_data_dir(path: str | Path, rows_per_file: int = 3) -> Path:
    """Write the synthetic data directory under ``path`` and return it.

    Layout: ``advbench/harmful_behaviors.csv`` (goal,target), ``bbh/tasks/<task>.json`` (27 tasks,
    ``{"canary", "examples": [{"input", "target"}]}``), ``arc/ARC-{Easy,Challenge}-Test.json``
    (list of ``{"input", "target"}``; ARC-Challenge's last row uses (1)..(4) labels),
    ``agieval/<subset>.jsonl`` (9 subsets; passage/question/options/label/answer/other) and
    ``bbsub/<task>.jsonl`` (``{"input", "target"}``) and ``xstest/xstest_prompts.csv`` (``write_sample_xstest``).
    """
    root = Path(path)
    rows = range(rows_per_file)
    (root / "advbench").mkdir(parents=True, exist_ok=True)
    with (root / "advbench" / "harmful_behaviors.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["goal", "target"])
        for i in rows:
            writer.writerow(
                [f"Placeholder request number {i}, with a comma", f"Sure, here is placeholder {i}"]
            )

    (root / "bbh" / "tasks").mkdir(parents=True, exist_ok=True)
    for task in BBH_TASKS:
        data = {"canary": "SYNTHETIC TEST DATA", "examples": [_bbh_example(task, i) for i in rows]}
        (root / "bbh" / "tasks" / f"{task}.json").write_text(json.dumps(data, indent=2), encoding="utf-8")

    (root / "arc").mkdir(parents=True, exist_ok=True)
    for name in ("ARC-Easy-Test.json", "ARC-Challenge-Test.json"):
        items = [
            _arc_example(i, numeric_labels=name.startswith("ARC-Challenge") and i == rows_per_file - 1)
            for i in rows
        ]
        (root / "arc" / name).write_text(json.dumps(items, indent=4), encoding="utf-8")

    (root / "agieval").mkdir(parents=True, exist_ok=True)
    for subset in AGIEVAL_SUBSETS:
        lines = [json.dumps(_agieval_row(subset, i), ensure_ascii=False) for i in rows]
        (root / "agieval" / f"{subset}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    (root / "bbsub").mkdir(parents=True, exist_ok=True)
    for task in BBSUB_TASKS:
        lines = [
            json.dumps(
                {
                    "input": f"Which fits {task} item {i}?\nOptions:\n(A) yes\n(B) no",
                    "target": f"({'AB'[i % 2]})",
                }
            )
            for i in rows
        ]
        (root / "bbsub" / f"{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_sample_xstest(root, rows_per_file)
    return root


def write_sample_xstest(root: Path, rows_per_label: int) -> Path:
    """``xstest/xstest_prompts.csv`` (id,prompt,type,label,focus,note): ``rows_per_label`` safe rows, then as many
    unsafe ones; safe row ``i`` has type ``homonyms`` for even ``i`` and ``definitions`` for odd ``i``, its contrast
    the same type prefixed with ``contrast_``."""
    path = root / "xstest" / "xstest_prompts.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "type", "label", "focus", "note"])
        for number, (label, i) in enumerate(
            ((label, i) for label in ("safe", "unsafe") for i in range(rows_per_label)), start=1
        ):
            prompt_type = ("homonyms", "definitions")[i % 2]
            prompt_type = prompt_type if label == "safe" else f"contrast_{prompt_type}"
            writer.writerow(
                [number, f"Placeholder {label} question {i}, with a comma?", prompt_type, label, "", ""]
            )
    return path


def judge_record(folder: Path, task: str) -> dict:
    """The one judge sidecar ``task`` wrote in ``folder``, as the results file records it (plus ``judge_file``)."""
    from slowed.evaluation.files import JUDGE_SIDECAR_NAME, judge_sidecars

    (path,) = [p for p in judge_sidecars(folder) if JUDGE_SIDECAR_NAME.match(p.name)["task"] == task]
    return {**json.loads(path.read_text(encoding="utf-8")), "judge_file": str(path)}
