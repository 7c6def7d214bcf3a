"""The generated corpus: answers and every intermediate step checked by independent evaluation."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys

import pytest

from slowed.builtin_corpus import (
    BUILTIN_TASKS,
    COUNTING_LEXICON,
    _arithmetic_steps,
    _boolean_step,
    _order_group,
    builtin_cot_corpus,
)
from slowed.data import CANONICAL_COLUMNS, load_cot_corpus, to_prompt_completion

N = 150


def rows_of(task: str, count: int = N, seed: int = 0) -> list[dict]:
    return builtin_cot_corpus(count, seed=seed, tasks=[task]).to_list()


def test_arithmetic_answers_and_every_step_match_python_eval():
    for row in rows_of("multistep_arithmetic"):
        question, rationale, answer = row["question"], row["rationale"], row["answer"]
        assert question.endswith(" =")
        assert eval(question.removesuffix(" =")) == int(answer)
        calculations = re.findall(r"^Let's calculate ([AB]) = (.+)\.$", rationale, re.MULTILINE)
        assert [name for name, _ in calculations] == ["A", "B"]
        values = []
        for _, chain in calculations:
            steps = chain.split(" = ")
            assert len({eval(step) for step in steps}) == 1, chain
            # one operator evaluated per step
            operator_counts = [len(re.findall(r" [-+*] ", step)) for step in steps]
            assert operator_counts == list(range(operator_counts[0], -1, -1)), chain
            values.append(eval(steps[-1]))
        assert question.startswith(f"({calculations[0][1].split(' = ')[0]} ")
        assert question.endswith(f" {calculations[1][1].split(' = ')[0]}) =")
        final = re.search(
            r"Then, the final equation is A ([-+*]) B = (.+) = (\S+)\. So the answer is (\S+)\.$", rationale
        )
        assert final is not None
        operator, combined, result, stated = final.groups()
        assert combined == f"{values[0]} {operator} {values[1]}"
        assert eval(combined) == int(result) == int(stated) == int(answer)


def test_arithmetic_steps_of_a_bbh_question_are_the_hand_worked_ones():
    # ((-1 + 2 + 9 * 5) - ...): the multiplication first, then left to right.
    assert _arithmetic_steps([-1, 2, 9, 5], ["+", "+", "*"]) == (
        ["(-1 + 2 + 9 * 5)", "(-1 + 2 + 45)", "(1 + 45)", "46"],
        46,
    )
    assert _arithmetic_steps([-4, 3, 8, -2], ["-", "*", "-"]) == (
        ["(-4 - 3 * 8 - -2)", "(-4 - 24 - -2)", "(-28 - -2)", "-26"],
        -26,
    )


def test_boolean_answers_and_every_step_match_python_eval():
    for row in rows_of("boolean_expressions"):
        question, rationale, answer = row["question"], row["rationale"], row["answer"]
        assert question.endswith(" is")
        expected = eval(question.removesuffix(" is"))
        assert answer == str(expected)
        steps = [line.removeprefix("Z = ").removeprefix("= ") for line in rationale.splitlines()[1:-1]]
        assert steps[0] == question.removesuffix(" is")
        assert [eval(step) for step in steps] == [expected] * len(steps)
        lengths = [len(step.split()) for step in steps]
        assert all(later < earlier for earlier, later in itertools.pairwise(lengths)), steps
        assert steps[-1] == answer
        assert rationale.splitlines()[-1] == f"So the answer is {answer}."


def boolean_steps(expression: str) -> list[str]:
    """Every expression _boolean_step produces from ``expression`` until a single value remains."""
    tokens, seen = expression.split(), []
    while len(tokens) > 1:
        tokens = _boolean_step(tokens)
        seen.append(" ".join(tokens))
    return seen


def test_boolean_step_reduces_the_innermost_bracket_then_not_and_or():
    assert boolean_steps("not ( True or ( False ) ) and True") == [
        "not ( True or False ) and True",
        "not ( True ) and True",
        "not True and True",
        "False and True",
        "False",
    ]
    assert boolean_steps("True or False and not False") == ["True or False and True", "True or False", "True"]


NUMBER_WORDS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def test_counting_answers_match_a_naive_parse_of_the_question():
    singulars = {singular for nouns in COUNTING_LEXICON.values() for singular, _ in nouns}
    plurals = {plural for nouns in COUNTING_LEXICON.values() for _, plural in nouns}
    for row in rows_of("object_counting"):
        match = re.fullmatch(r"I have (.+)\. How many (.+) do I have\?", row["question"])
        assert match is not None, row["question"]
        items = [item.split(" ", 1) for item in re.split(r", and |, | and ", match[1])]
        category_nouns = {noun for pair in COUNTING_LEXICON[match[2]] for noun in pair}
        counted = [(noun, NUMBER_WORDS[word]) for word, noun in items if noun in category_nouns]
        assert int(row["answer"]) == sum(quantity for _, quantity in counted)
        for word, noun in items:
            if NUMBER_WORDS[word] == 1:
                assert noun in singulars and word == ("an" if noun[0] in "aeiou" else "a")
            else:
                assert noun in plurals
        bullets = re.findall(r"^- (.+) \((\d)\)$", row["rationale"], re.MULTILINE)
        assert [(noun, int(quantity)) for noun, quantity in bullets] == counted
        assert row["rationale"].endswith(f"= {row['answer']}. So the answer is {row['answer']}.")


def test_counting_lexicon_categories_do_not_share_nouns():
    nouns = [noun for pairs in COUNTING_LEXICON.values() for pair in pairs for noun in pair]
    assert len(nouns) == len(set(nouns))


def test_word_sorting_answers_match_sorted():
    for row in rows_of("word_sorting"):
        words = row["question"].removeprefix("Sort the following words alphabetically: List: ").split()
        assert len(set(words)) == len(words)
        assert row["answer"].split() == sorted(words)
        assert row["rationale"].endswith(
            f"Hence the sorted list is: {row['answer']}. So the answer is {row['answer']}."
        )


def test_word_sorting_explains_ties_letter_by_letter():
    lines: list[str] = []
    assert _order_group(["oven", "costume", "counterpart", "counter"], lines) == [
        "costume",
        "counter",
        "counterpart",
        "oven",
    ]
    assert lines == [
        'First letters: "oven" (o), "costume" (c), "counterpart" (c), "counter" (c), '
        'so ["costume" ? "counterpart" ? "counter"] < "oven".',
        'Words starting with "co", by letter 3: "costume" (s), "counterpart" (u), "counter" (u), '
        'so "costume" < ["counterpart" ? "counter"].',
        'Words starting with "counter", by letter 8: "counterpart" (p), "counter" (end), so "counter" < "counterpart".',
    ]


CLOSERS = {")": "(", "]": "[", "}": "{", ">": "<"}


def test_dyck_answers_close_the_sequence_with_closers_only():
    for row in rows_of("dyck_languages"):
        symbols = row["question"].split("Input: ", 1)[1]
        assert row["answer"] and all(symbol in CLOSERS for symbol in row["answer"].split())
        text = (symbols + row["answer"]).replace(" ", "")
        while any(pair in text for pair in ("()", "[]", "{}", "<>")):
            for pair in ("()", "[]", "{}", "<>"):
                text = text.replace(pair, "")
        assert text == "", row["question"]
        trace = re.findall(r"^(\d+): (\S) ; stack: (.+)$", row["rationale"], re.MULTILINE)
        assert [symbol for _, symbol, _ in trace] == symbols.split()
        assert [int(step) for step, _, _ in trace] == list(range(1, len(trace) + 1))


def test_corpus_shape_indices_and_unique_questions():
    corpus = builtin_cot_corpus(20)
    assert corpus.column_names == list(CANONICAL_COLUMNS)
    assert corpus["task"] == [task for task in BUILTIN_TASKS for _ in range(20)]
    assert corpus["index"] == list(range(20)) * len(BUILTIN_TASKS)
    for task in BUILTIN_TASKS:
        questions = [row["question"] for row in corpus if row["task"] == task]
        assert len(set(questions)) == 20
    assert max(len(text) for text in corpus["rationale"]) < 700  # short enough for a quick CPU run
    # The README and the smollm2 recipe (8 per task → 40 rows, 10 steps per epoch) count on these five tasks.
    assert BUILTIN_TASKS == (
        "multistep_arithmetic",
        "boolean_expressions",
        "object_counting",
        "word_sorting",
        "dyck_languages",
    )


def test_generation_is_deterministic_per_seed_and_per_task():
    first = builtin_cot_corpus(16, seed=5).to_list()
    assert builtin_cot_corpus(16, seed=5).to_list() == first
    assert builtin_cot_corpus(16, seed=6).to_list() != first
    alone = builtin_cot_corpus(16, seed=5, tasks=["word_sorting"]).to_list()
    assert alone == [row for row in first if row["task"] == "word_sorting"]


def test_generation_does_not_depend_on_the_hash_seed():
    script = (
        "import hashlib, json; from slowed.builtin_corpus import builtin_cot_corpus; "
        "print(hashlib.sha256(json.dumps(builtin_cot_corpus(8, seed=2).to_list()).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    digest = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert (
        digest.strip()
        == hashlib.sha256(json.dumps(builtin_cot_corpus(8, seed=2).to_list()).encode()).hexdigest()
    )


def test_completions_end_in_the_one_answer_sentence():
    corpus = builtin_cot_corpus(12)
    for source, converted in zip(corpus, to_prompt_completion(corpus), strict=True):
        content = converted["completion"][0]["content"]
        sentence = f"So the answer is {source['answer']}."
        assert content.endswith(" " + sentence)
        assert content.count("So the answer is") == 1
        assert converted["prompt"] == [{"role": "user", "content": source["question"]}]


def test_jsonl_round_trip_through_the_loader(tmp_path):
    corpus = builtin_cot_corpus(4)
    path = tmp_path / "builtin.jsonl"
    corpus.to_json(path, lines=True)
    assert load_cot_corpus(path).to_list() == corpus.to_list()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_per_task must be a positive integer"):
        builtin_cot_corpus(0)
    with pytest.raises(ValueError, match=r"unknown built-in tasks \['navigate'\]"):
        builtin_cot_corpus(2, tasks=["navigate"])
    with pytest.raises(TypeError, match="write \\['word_sorting'\\]"):
        builtin_cot_corpus(2, tasks="word_sorting")
