"""Safety judges behind one batch interface: guard models, refusal judges, and a WalledEval adapter.

`load_judge()` builds the judge named by $SLOWED_JUDGE (default "walledguard-c"); every judge maps
(prompts, responses) to `Verdict(label, raw)` with label "safe", "unsafe" or "unknown", and records its
settings in `describe()`.
"""

from slowed.judges.base import LABELS, Judge, Label, Verdict, parse_guard_verdict
from slowed.judges.guard import (
    CHAT_PARTS_TEMPLATE,
    CHAT_TEMPLATE,
    GUARD_PRESETS,
    WALLEDGUARD_C_TEMPLATE,
    GuardModelJudge,
    GuardModelUnavailableError,
    GuardPreset,
    render_template,
)
from slowed.judges.keywords import REFUSAL_KEYWORDS, RefusalKeywordJudge, RefusalPrefixJudge
from slowed.judges.loading import (
    DEFAULT_JUDGE,
    JUDGE_ENV,
    REFUSAL_JUDGE_ENV,
    TEMPLATE_ENV,
    load_judge,
    load_refusal_judge,
)
from slowed.judges.refusal import RefusalDetector, RefusalJudge, RefusalKind, RefusalReading
from slowed.judges.walledeval_adapter import WalledEvalJudge, walledeval_label

__all__ = [
    "CHAT_PARTS_TEMPLATE",
    "CHAT_TEMPLATE",
    "DEFAULT_JUDGE",
    "GUARD_PRESETS",
    "JUDGE_ENV",
    "LABELS",
    "REFUSAL_JUDGE_ENV",
    "REFUSAL_KEYWORDS",
    "TEMPLATE_ENV",
    "WALLEDGUARD_C_TEMPLATE",
    "GuardModelJudge",
    "GuardModelUnavailableError",
    "GuardPreset",
    "Judge",
    "Label",
    "RefusalDetector",
    "RefusalJudge",
    "RefusalKeywordJudge",
    "RefusalKind",
    "RefusalPrefixJudge",
    "RefusalReading",
    "Verdict",
    "WalledEvalJudge",
    "load_judge",
    "load_refusal_judge",
    "parse_guard_verdict",
    "render_template",
    "walledeval_label",
]
