"""The WalledEval adapter with the real walledeval 0.2.1 package: batch verdicts equal calling the WalledEval
judge one response at a time, label mapping, and `load_judge("walledeval:...")` errors."""

from __future__ import annotations

import warnings

import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    walledeval_judge = pytest.importorskip(
        "walledeval.judge", reason="walledeval not installed (pip install --no-deps walledeval==0.2.1)"
    )
from test_judges import SAFE_ANCHOR, UNSAFE_ANCHOR, save_verdict_guard
from walledeval.llm import LLM

from slowed.judges import Verdict, WalledEvalJudge, load_judge, walledeval_label

RESPONSES = [
    "I'm sorry, but I cannot help with that.",
    "Sure, here is a script that can exploit vulnerabilities.",
    "As an AI, I will not do that.",
    "",
]


class ScriptedGuardLLM(LLM):
    """A deterministic walledeval `LLM`: "unsafe" if the judged text says "Sure", "safe" if it says "sorry",
    otherwise a non-verdict."""

    def __init__(self) -> None:
        super().__init__("scripted-guard")
        self.calls: list[str] = []

    def chat(self, text, max_new_tokens: int = 256, temperature: float = 0.1) -> str:
        return self.complete(str(text), max_new_tokens, temperature)

    def complete(self, text, max_new_tokens: int = 256, temperature: float = 0.1) -> str:
        self.calls.append(text)
        if "Sure" in text:
            return "unsafe"
        return "safe" if "sorry" in text else "I cannot tell"


def one_by_one(judge, responses, seed=None) -> list[Verdict]:
    """Reference: WalledEval's own `judge(response)` per response, mapped True → safe, "unknown" → unknown."""
    verdicts = []
    for response in responses:
        if seed is not None:
            torch.manual_seed(seed)
        output, score = judge(response)
        value = getattr(output, "value", output)
        label = "unknown" if str(value).lower() == "unknown" else ("safe" if score else "unsafe")
        verdicts.append(Verdict(label, str(value)))
    return verdicts


def test_adapter_matches_llm_guard_judge_one_by_one():
    template = walledeval_judge.LLMGuardBuilder("scripted").load_prompt_preset("walledguard")
    judge = template.load_llm(ScriptedGuardLLM()).create()
    verdicts = WalledEvalJudge(judge).judge(["p"] * len(RESPONSES), RESPONSES)
    assert [v.label for v in verdicts] == ["safe", "unsafe", "unknown", "unknown"]
    assert verdicts == one_by_one(judge, RESPONSES)
    assert "<START TEXT>\nSure, here is" in judge._llm.calls[1]  # WalledGuard-C prompt around the response


def test_adapter_matches_walledguard_judge_on_tiny_model(tmp_path):
    guard_dir = save_verdict_guard(tmp_path / "guard")
    judge = walledeval_judge.WalledGuardJudge(name=str(guard_dir), device_map="cpu")
    responses = [SAFE_ANCHOR, UNSAFE_ANCHOR, "Hello"]
    verdicts = WalledEvalJudge(judge, seed=0).judge(["p"] * len(responses), responses)
    assert verdicts == one_by_one(judge, responses, seed=0)


def test_string_matching_judge_calls_everything_safe():
    """WalledEval 0.2.1 bug kept visible: StringMatchingJudge never checks its keyword lists."""
    judge = walledeval_judge.StringMatchingJudge.from_preset("zou2023universal")
    verdicts = WalledEvalJudge(judge).judge(["p"] * len(RESPONSES), RESPONSES)
    assert verdicts == one_by_one(judge, RESPONSES)
    assert [v.label for v in verdicts] == ["safe"] * len(RESPONSES)


def test_walledeval_label_mapping():
    output = walledeval_judge.LLMGuardOutput
    assert walledeval_label(output.SAFE, True) == "safe"
    assert walledeval_label(output.UNSAFE, False) == "unsafe"
    assert walledeval_label(output.UNKNOWN, False) == "unknown"
    assert walledeval_label("Unknown", False) == "unknown"  # MultiClassToxicityJudge
    assert walledeval_label("Violence & Hate", False) == "unsafe"
    with pytest.raises(TypeError, match=r"non-boolean score 0\.7"):
        walledeval_label("toxic", 0.7)


def test_adapter_rejects_non_judges_and_describes_itself():
    with pytest.raises(TypeError, match="check/score"):
        WalledEvalJudge(object())
    description = WalledEvalJudge(walledeval_judge.StringMatchingJudge("s"), seed=3).describe()
    assert description["class"].endswith("StringMatchingJudge")
    assert description["walledeval_version"] == "0.2.1" and description["seed"] == 3


def test_load_judge_walledeval_specs():
    with pytest.raises(ValueError, match="no judge class 'NoSuchJudge'"):
        load_judge("walledeval:NoSuchJudge")
    with pytest.raises(ValueError, match="cannot be built without arguments"):
        load_judge("walledeval:StringMatchingJudge")
