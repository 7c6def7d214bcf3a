"""Answer extraction and scoring on hand-written generations in every benchmark's answer format."""

from __future__ import annotations

import pytest

from slowed.evaluation.answers import (
    NO_ANSWER,
    bbh_answers_match,
    choice_from_answer,
    extract_answer,
    extract_answers,
    math_answers_match,
    normalize_choice,
    process_results_bbh,
    process_results_math,
    process_results_multiple_choice,
)
from slowed.prompting import assistant_message

MC_QUESTION = "Which day?\nOptions:\n(A) Monday\n(B) Tuesday\n(C) Wednesday"


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("Let's think. So the answer is (B).", "(B)"),
        ("so THE ANSWER IS False.", "False"),
        ("The answer is (A). Wait, re-checking: the answer is (C).", "(C)"),  # the LAST one wins
        ("So the answer is **B**.", "B"),
        ("So the answer is $5$.", "5"),
        ("So the answer is **$-3.5$**.", "-3.5"),
        ("So the answer is 3.5.", "3.5"),  # a decimal point is not a sentence end
        ("So the answer is: valid", "valid"),
        ("So the answer is (B). Because Tuesday follows Monday.", "(B)"),
        ("So the answer is (B)\nExtra line.", "(B)"),
        ("So the answer is\n(D)", "(D)"),
        ("So the answer is \n \n x", "x"),
        ("So the answer is ] ) }.", "] ) }"),
        ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ('So the answer is "yes".', "yes"),
        ("So the answer is $\\boxed{B}$.", "B"),
        ("So the answer is apple banana cherry.", "apple banana cherry"),
        ("I think it is (B).", None),  # no answer sentence
        ("So the answer is.", None),  # empty answer
        ("", None),
    ],
)
def test_extract_answer(generation: str, expected: str | None) -> None:
    assert extract_answer(generation) == expected


def test_extract_answer_reads_the_training_answer_sentence() -> None:
    message = assistant_message("Monday is first. Then comes Tuesday.", "(B)")
    assert extract_answer(message["content"]) == "(B)"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("(B)", "(B)"),
        ("B", "(B)"),
        ("B.", "(B)"),
        ("b)", "(B)"),
        ("(b)", "(B)"),
        ("Option B", "(B)"),
        ("(B) Tuesday", "(B)"),
        ("B: Tuesday", "(B)"),
        ("1", "(1)"),  # ARC's numeric labels
        ("(3)", "(3)"),
        ("Tuesday", None),
        ("a dog", None),  # a lower-case article is not a label
        ("No", None),
        (None, None),
    ],
)
def test_normalize_choice(answer: str | None, expected: str | None) -> None:
    assert normalize_choice(answer) == expected


def test_choice_from_option_text() -> None:
    assert choice_from_answer("tuesday", MC_QUESTION) == "(B)"
    assert choice_from_answer("Friday", MC_QUESTION) is None


@pytest.mark.parametrize(
    ("answer", "target", "matches"),
    [
        ("false", "False", True),
        ("True", "False", False),
        ("Yes", "Yes", True),
        ("no", "Yes", False),
        ("valid", "invalid", False),
        ("invalid", "invalid", True),
        ("-50", "-50", True),
        ("−50", "-50", True),  # unicode minus
        ("24.0", "24", True),
        ("1,000", "1000", True),
        ("23", "24", False),
        ("]]>", "] ] >", True),  # Dyck sequences ignore spaces
        ("] ]", "] ] >", False),
        ("abc bcd, cde", "abc bcd cde", True),  # word sorting: commas do not matter
        ("bcd abc cde", "abc bcd cde", False),
        ("b", "(B)", True),
        ("Tuesday", "(B)", True),  # the option's text
        ("(C)", "(B)", False),
        ("Monsters, Inc", "Monsters, Inc", True),  # BBH free-text target in a letter task
        (None, "True", False),
    ],
)
def test_bbh_answers_match(answer: str | None, target: str, matches: bool) -> None:
    assert bbh_answers_match(answer, target, MC_QUESTION) is matches


@pytest.mark.parametrize(
    ("answer", "target", "matches"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
        ("1/2", "\\frac{1}{2}", True),
        ("\\frac12", "\\frac{1}{2}", True),
        ("x = 5", "5", True),
        ("5 \\text{ cm}", "5", True),
        ("90^\\circ", "90", True),
        ("(3, 4]", "(3,4]", True),
        ("\\left( 2, 3 \\right)", "(2,3)", True),
        ("10.0", "10", True),
        ("72 + 72\\sqrt2", "72 + 72\\sqrt{2}", True),
        ("6", "5", False),
        ("\\frac{1}{3}", "\\frac{1}{2}", False),
        (None, "5", False),
    ],
)
def test_math_answers_match(answer: str | None, target: str, matches: bool) -> None:
    assert math_answers_match(answer, target) is matches


def _filtered(generation: str) -> list[str]:
    """What lm-eval hands process_results after the `answer` filter (extract_answers, then take_first)."""
    (extracted,) = extract_answers([[generation]], [{}])
    return [extracted[0]]


def test_answer_filter_logs_the_extracted_answer() -> None:
    generations = [
        ["not True is False. So the answer is False."],
        ["It is B."],
        ["The answer is (C). No, the answer is (B)."],
    ]
    assert extract_answers(generations, [{}, {}, {}]) == [["False"], [NO_ANSWER], ["(B)"]]


def test_process_results_return_only_exact_match() -> None:
    mc_doc = {"question": MC_QUESTION, "target": "(B)"}
    assert process_results_multiple_choice(mc_doc, _filtered("So the answer is (B).")) == {"exact_match": 1}
    assert process_results_multiple_choice(mc_doc, _filtered("So the answer is (A).")) == {"exact_match": 0}
    assert process_results_multiple_choice(mc_doc, _filtered("It is B.")) == {"exact_match": 0}
    bbh_doc = {"question": "not ( True ) is", "target": "False"}
    assert process_results_bbh(bbh_doc, _filtered("not True is False. So the answer is False.")) == {
        "exact_match": 1
    }
    math_doc = {"question": "Question: Half of 1?", "target": "\\frac{1}{2}"}
    assert process_results_math(math_doc, _filtered("So the answer is $\\dfrac{1}{2}$.")) == {
        "exact_match": 1
    }
    with pytest.raises(ValueError, match="one extracted answer per document"):
        process_results_bbh(bbh_doc, ["a", "b"])
