"""Answer extraction and scoring for the reasoning tasks: the lm-eval ``answer`` filter and ``process_results`` hooks.

A student trained with :mod:`slowed.prompting` ends its rationale with "So the answer is X.". Scoring
takes X from the LAST "the answer is" in the generation (case-insensitive), normalises it for the
benchmark's answer format and compares it with the gold target:

- multiple choice (BBH letter tasks, ARC, AGIEval, BB-Sub): "(B)", "B", "B.", "b)", "**B**",
  "Option B", "(B) Tuesday" all become "(B)"; ARC's numeric labels become "(1)".."(5)"; an answer
  that is exactly the text of one option (as listed in the question) counts as that option;
- BBH free-form targets (True/False, Yes/No, valid/invalid, numbers, words, Dyck sequences, sorted
  word lists): case-, whitespace- and surrounding-punctuation-insensitive; numbers compare as
  numbers; Dyck sequences ignore spaces;
- AGIEval MATH cloze: LaTeX normalised (``\\boxed``, ``$``, ``\\left``/``\\right``, ``\\dfrac``,
  spaces, units in ``\\text{}``, ``a/b`` vs ``\\frac{a}{b}``, degrees, percent) before comparison.

No "the answer is" sentence means no answer (scored 0): the protocol measures the trained format.

In lm-eval the extraction runs as the reasoning tasks' named filter ``answer`` (`extract_answers`, then
``take_first``), so ``--log_samples`` shows the extracted answer, and the hooks score it (metric key
``exact_match,answer``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_ANSWER_IS = re.compile(r"the\s+answer\s+is\b", re.IGNORECASE)
# End of the answer: a sentence end (a period before a space or the end, never a decimal point) or a line break.
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")
_BOXED = re.compile(r"\\boxed\s*\{")
_CHOICE_LABEL = r"[A-Z]|\d{1,2}"
_CHOICE_PATTERNS = (
    re.compile(rf"^\(\s*({_CHOICE_LABEL})\s*\)", re.IGNORECASE),  # "(B)", "(b) text", "(1)"
    re.compile(rf"^({_CHOICE_LABEL})(?:[).:]|\s|$)"),  # "B", "B.", "B)", "B: text", "1"
    re.compile(r"^([a-z])(?:[).:]|$)"),  # "b)", "b." or a lone "b" (never "a dog")
)
_CHOICE_PREFIX = re.compile(r"^(?:option|choice)\s+", re.IGNORECASE)
_OPTION_LINE = re.compile(rf"^\s*\(({_CHOICE_LABEL})\)\s*(.+?)\s*$", re.MULTILINE)
_DYCK_CHARS = frozenset("()[]{}<> ")
_NUMBER = re.compile(r"^[-+−]?\d+(?:\.\d+)?$")


def extract_answer(text: str) -> str | None:
    """The answer after the last "the answer is" in ``text``; None when there is none or it is empty.

    The answer runs to the end of its sentence (a period followed by a space or the line end, not a
    decimal point) or line; surrounding markdown emphasis, quotes, ``$...$``, ``\\boxed{}`` and
    trailing punctuation are removed: "So the answer is **$5$**." -> "5".
    """
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].lstrip(" \t\r\n:")
    rest = _unwrap_boxed(rest)
    end = _SENTENCE_END.search(rest)
    answer = rest[: end.start()] if end else rest
    answer = _strip_decorations(answer)
    return answer or None


def _unwrap_boxed(text: str) -> str:
    """``\\boxed{X} rest`` -> ``X rest`` (balanced braces); other text unchanged."""
    match = _BOXED.match(text)
    if not match:
        return text
    depth = 1
    for index in range(match.end(), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[match.end() : index] + text[index + 1 :]
    return text


def _strip_decorations(answer: str) -> str:
    previous = None
    while previous != answer:
        previous = answer
        answer = _unwrap_boxed(answer.strip().rstrip(".,;!"))
        for left, right in (("**", "**"), ("__", "__"), ("$", "$"), ('"', '"'), ("'", "'"), ("`", "`")):
            if (
                len(answer) > len(left) + len(right) - 1
                and answer.startswith(left)
                and answer.endswith(right)
            ):
                answer = answer[len(left) : len(answer) - len(right)]
        answer = answer.removeprefix("**").removesuffix("**")
    return answer


def normalize_choice(answer: str | None) -> str | None:
    """A choice label as "(B)" / "(1)" from "(B)", "B", "B.", "b)", "Option B", "(B) text"; else None."""
    if answer is None:
        return None
    text = _CHOICE_PREFIX.sub("", _strip_decorations(answer))
    for pattern in _CHOICE_PATTERNS:
        match = pattern.match(text)
        if match:
            return f"({match.group(1).upper()})"
    return None


def parse_options(question: str) -> dict[str, str]:
    """The "(X) text" option lines of a question: {"(X)": "text"} in order of appearance."""
    return {f"({label.upper()})": text for label, text in _OPTION_LINE.findall(question)}


def choice_from_answer(answer: str | None, question: str) -> str | None:
    """The chosen option label: from the answer's label, else from an answer equal to one option's text."""
    label = normalize_choice(answer)
    if label is not None or answer is None:
        return label
    wanted = normalize_free_form(answer)
    hits = [label for label, text in parse_options(question).items() if normalize_free_form(text) == wanted]
    return hits[0] if len(hits) == 1 else None


def _canonical_number(value: float) -> str:
    """``5.0`` -> "5", ``3.5`` -> "3.5": one spelling per number."""
    return str(int(value)) if value.is_integer() else repr(value)


def normalize_free_form(answer: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or quotes; numbers in canonical form."""
    text = " ".join(_strip_decorations(answer).split()).lower()
    text = text.strip(" .,;:!?\"'`")
    number = text.replace(",", "").replace("−", "-")
    if _NUMBER.match(number):
        value = float(number)
        return _canonical_number(value)
    return text


def is_dyck_sequence(text: str) -> bool:
    """True for a non-empty string of brackets and spaces (the BBH dyck_languages targets)."""
    return bool(text.strip()) and set(text) <= _DYCK_CHARS


def bbh_answers_match(answer: str | None, target: str, question: str) -> bool:
    """Whether an extracted answer matches a BBH target (letter, Dyck sequence or free-form)."""
    if answer is None:
        return False
    if normalize_choice(target) == target.strip():
        return choice_from_answer(answer, question) == target.strip()
    if is_dyck_sequence(target):
        return "".join(answer.split()) == "".join(target.split())
    if normalize_free_form(answer) == normalize_free_form(target):
        return True
    # Sorted word lists and names: commas between words do not matter ("a, b, c" == "a b c").
    return normalize_free_form(answer.replace(",", " ")) == normalize_free_form(target.replace(",", " "))


def normalize_math(answer: str) -> str:
    """A canonical string for a MATH-style final answer, for equality comparison."""
    text = _strip_decorations(_unwrap_boxed(answer.strip()))
    whole_text = re.fullmatch(r"\\(?:text|mathrm)\{([^{}]*)\}", text)
    text = whole_text.group(1) if whole_text else text
    text = re.sub(r"\s*\\(?:text|mbox)\{\s*[^{}]*\}\s*$", "", text)  # trailing units: "5 \text{ cm}"
    for old, new in (
        ("\\!", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
    ):
        text = text.replace(old, new)
    for noise in ("^{\\circ}", "^\\circ", "\\%", "%", "\\$", "$", "\\,", "\\;", "\\ "):
        text = text.replace(noise, "")
    text = "".join(text.split())
    if re.fullmatch(r"[a-zA-Z]\w{0,2}=.+", text) and text.count("=") == 1:  # "x=5" -> "5"
        text = text.split("=", 1)[1]
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", text)
    text = re.sub(r"^(-?\d+)/(\d+)$", r"\\frac{\1}{\2}", text)
    number = text.replace(",", "")
    if re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", number):
        value = float(number)
        return _canonical_number(value)
    return text


def math_answers_match(answer: str | None, target: str) -> bool:
    """Whether an extracted answer equals a MATH cloze target after :func:`normalize_math`."""
    return answer is not None and normalize_math(answer) == normalize_math(target)


#: What the extraction filter logs for a generation with no "the answer is ...": scored as no answer.
NO_ANSWER = "[no answer]"


def extract_answers(resps: Iterable[Sequence[str]], docs: Sequence[dict]) -> list[list[str]]:
    """lm-eval ``custom`` filter (named ``answer`` in the reasoning template, as lm-eval's bbh names its
    extracts): each generation's `extract_answer`, or `NO_ANSWER`; ``--log_samples`` shows it as
    ``filtered_resps``."""
    return [[extract_answer(generation) or NO_ANSWER for generation in generations] for generations in resps]


def _extracted(results: Sequence[str]) -> str | None:
    """The one filtered response of a document: its extracted answer, or None for `NO_ANSWER`."""
    if len(results) != 1:
        raise ValueError(f"expected one extracted answer per document, got {len(results)}")
    return None if results[0] == NO_ANSWER else results[0]


def process_results_bbh(doc: dict, results: Sequence[str]) -> dict[str, int]:
    """lm-eval hook for BBH documents (``question``, ``target``) after the ``answer`` filter: {"exact_match": 0 or 1}."""
    return {"exact_match": int(bbh_answers_match(_extracted(results), doc["target"], doc["question"]))}


def process_results_multiple_choice(doc: dict, results: Sequence[str]) -> dict[str, int]:
    """lm-eval hook for multiple-choice documents (target "(X)") after the ``answer`` filter: {"exact_match": 0 or 1}."""
    return {"exact_match": int(choice_from_answer(_extracted(results), doc["question"]) == doc["target"])}


def process_results_math(doc: dict, results: Sequence[str]) -> dict[str, int]:
    """lm-eval hook for AGIEval MATH cloze documents after the ``answer`` filter: {"exact_match": 0 or 1}."""
    return {"exact_match": int(math_answers_match(_extracted(results), doc["target"]))}
