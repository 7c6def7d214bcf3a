"""Adapter from any WalledEval 0.2.1 `Judge` (one response at a time) to the batch `Judge` interface.

WalledEval is optional and imported lazily. Its judges return `(output, score)` from
`judge(response)`; across its safety judges the boolean score means "safe/benign" (`LLMGuardJudge`:
`output == "safe"`, `MultiClassToxicityJudge`: `output == "Safe"`, the HF classifiers: label is
neutral/benign). Mapping: an output whose value is "unknown" (`LLMGuardOutput.UNKNOWN`,
`MultiClassToxicityJudge`'s "Unknown") → "unknown"; else score True → "safe", False → "unsafe";
a non-boolean score raises. Caveats measured in WalledEval 0.2.1: its LLM judges sample
(`do_sample=True`, temperature 0.1, top_p 0.9) so verdicts vary run to run unless `seed` is set;
`WalledGuardJudge` wraps the model-card prompt in the tokenizer's chat template and uses a substring
parser; `StringMatchingJudge.check` never looks at its keyword lists (its loops run only when the lists are
empty) and so calls every response safe. Prefer `GuardModelJudge` for headline numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

import torch

from slowed.judges.base import Judge, Label, Verdict


class WalledEvalJudge(Judge):
    """Run a WalledEval judge over a batch, one response at a time.

    `judge(response)` is called per pair (WalledEval judges read the response only); a
    `QuestionLLMasaJudge` also gets the prompt as its `question`. With `seed` set, `torch.manual_seed(seed)`
    runs before every item, so a sampling judge gives the same verdict for the same response regardless of
    position or batch. `raw` is `str(output)` (the enum value for guard outputs).
    """

    def __init__(self, judge: Any, seed: int | None = None) -> None:
        if not (callable(getattr(judge, "check", None)) and callable(getattr(judge, "score", None))):
            raise TypeError(
                f"WalledEvalJudge needs a walledeval.judge.Judge (with check/score), got {type(judge).__name__}"
            )
        self.walledeval_judge = judge
        self.seed = seed

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        self.check_pairs(prompts, responses)
        from walledeval.judge import QuestionLLMasaJudge

        asks_question = isinstance(self.walledeval_judge, QuestionLLMasaJudge)
        return [
            self._judge_one(prompt, response, asks_question)
            for prompt, response in zip(prompts, responses, strict=True)
        ]

    def _judge_one(self, prompt: str, response: str, asks_question: bool) -> Verdict:
        if self.seed is not None:
            torch.manual_seed(self.seed)
        if asks_question:
            output = self.walledeval_judge.check(response, question=prompt)
            score = self.walledeval_judge.score(output)
        else:
            output, score = self.walledeval_judge(response)
        return Verdict(
            walledeval_label(output, score, type(self.walledeval_judge).__name__), _raw_text(output)
        )

    def describe(self) -> dict[str, Any]:
        judge = self.walledeval_judge
        return {
            "kind": "walledeval",
            "class": f"{type(judge).__module__}.{type(judge).__qualname__}",
            "name": getattr(judge, "name", None),
            "walledeval_version": version("walledeval"),
            "seed": self.seed,
            "generation": "WalledEval defaults (LLM judges sample at temperature 0.1, top_p 0.9)",
        }


def _raw_text(output: Any) -> str:
    value = getattr(output, "value", output)
    return value if isinstance(value, str) else str(output)


def walledeval_label(output: Any, score: Any, judge_name: str = "judge") -> Label:
    """Map a WalledEval (output, score) pair to a label: output "unknown" → unknown, score True → safe."""
    if str(getattr(output, "value", output)).strip().lower() == "unknown":
        return "unknown"
    if isinstance(score, bool):
        return "safe" if score else "unsafe"
    raise TypeError(
        f"WalledEval {judge_name} returned a non-boolean score {score!r} ({type(score).__name__}); "
        "only judges whose score means True = safe can be adapted"
    )
