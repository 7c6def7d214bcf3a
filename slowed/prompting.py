"""The one chat format shared by training data and evaluation tasks.

A question becomes the user message verbatim; the assistant answers with the rationale followed by
one fixed answer sentence, ``So the answer is <answer>.``. Evaluation prompts a student with the
same user message (through the model's chat template) and extracts the answer from that sentence.
"""

from __future__ import annotations

import re

ANSWER_SENTENCE = "So the answer is {answer}."

# A trailing answer sentence already present in a teacher rationale ("... So the answer is False.").
_TRAILING_ANSWER = re.compile(r"\s*(?:So,?\s+)?the answer is\b[^\n]*\s*$", re.IGNORECASE)


def user_message(question: str) -> dict[str, str]:
    """The user turn for a question (verbatim, stripped)."""
    return {"role": "user", "content": question.strip()}


def strip_answer_sentence(rationale: str) -> str:
    """The rationale without a trailing "So the answer is ..." sentence, if it has one."""
    return _TRAILING_ANSWER.sub("", rationale.strip()).rstrip()


def assistant_message(rationale: str, answer: str) -> dict[str, str]:
    """The assistant turn: the rationale (its own answer sentence removed) + the fixed answer sentence."""
    body = strip_answer_sentence(rationale)
    sentence = ANSWER_SENTENCE.format(answer=answer.strip())
    return {"role": "assistant", "content": f"{body} {sentence}" if body else sentence}
