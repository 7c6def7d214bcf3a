"""`load_judge`: build a judge from a spec string or from the SLOWED_JUDGE* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from slowed.judges.base import Judge
from slowed.judges.guard import GUARD_PRESETS, GuardModelJudge, read_template_spec
from slowed.judges.refusal import load_refusal_judge, refusal_judge_names

DEFAULT_JUDGE = "walledguard-c"
JUDGE_ENV = "SLOWED_JUDGE"
TEMPLATE_ENV = "SLOWED_JUDGE_TEMPLATE"
# Guard options read from the environment (lm-eval filters cannot see --metadata).
GUARD_OPTION_ENVS: dict[str, tuple[str, type]] = {
    "batch_size": ("SLOWED_JUDGE_BATCH_SIZE", int),
    "max_new_tokens": ("SLOWED_JUDGE_MAX_NEW_TOKENS", int),
    "device": ("SLOWED_JUDGE_DEVICE", str),
    "dtype": ("SLOWED_JUDGE_DTYPE", str),
    "revision": ("SLOWED_JUDGE_REVISION", str),
}
WALLEDEVAL_PREFIX = "walledeval:"


def guard_options_from_env() -> dict[str, Any]:
    """Guard constructor options set through SLOWED_JUDGE_BATCH_SIZE/_MAX_NEW_TOKENS/_DEVICE/_DTYPE/_REVISION."""
    options: dict[str, Any] = {}
    for option, (variable, cast) in GUARD_OPTION_ENVS.items():
        value = os.environ.get(variable, "").strip()
        if not value:
            continue
        try:
            options[option] = cast(value)
        except ValueError as error:
            raise ValueError(
                f"{variable}={value!r} is not a valid {cast.__name__} for the judge's {option}"
            ) from error
    return options


def load_judge(spec: str | None = None, **guard_options: Any) -> Judge:
    """Build the judge named by `spec` (default: $SLOWED_JUDGE, else "walledguard-c").

    Spec forms:
    - a refusal judge (`slowed.judges.refusal.load_refusal_judge`): "refusal" (`RefusalJudge`), "gcg-keywords"
      (alias "keywords": the GCG list anywhere, `RefusalKeywordJudge`) or "gcg-prefix" (the GCG list at the start).
    - a preset ("walledguard-c", "llama-guard-3-1b", "llama-guard-3-8b"): `GuardModelJudge.from_preset`.
    - "walledeval:<ClassName>": `WalledEvalJudge(walledeval.judge.<ClassName>())`, the class built with its
      own defaults (e.g. WalledGuardJudge; classes that need arguments must be built in Python and wrapped).
    - anything else: a guard model (local directory or hub id) read with the template in
      $SLOWED_JUDGE_TEMPLATE (a preset name, "chat", or a file with {prompt}/{response}).
    Guard options (batch_size, max_new_tokens, device, dtype, revision) come from `guard_options`, else
    from the SLOWED_JUDGE_* variables in `GUARD_OPTION_ENVS`.
    """
    spec = (spec if spec is not None else os.environ.get(JUDGE_ENV, "")).strip() or DEFAULT_JUDGE
    if spec in refusal_judge_names():
        return load_refusal_judge(spec)
    if spec.startswith(WALLEDEVAL_PREFIX):
        return _load_walledeval_judge(spec[len(WALLEDEVAL_PREFIX) :])
    options = {**guard_options_from_env(), **guard_options}
    if spec in GUARD_PRESETS:
        return GuardModelJudge.from_preset(spec, **options)
    template_spec = os.environ.get(TEMPLATE_ENV, "").strip()
    if not template_spec:
        where = "a local directory" if Path(spec).expanduser().exists() else "a guard model id or path"
        raise ValueError(
            f"judge spec {spec!r} is not 'keywords', a preset ({', '.join(sorted(GUARD_PRESETS))}) or "
            f"'walledeval:<ClassName>', so it is read as {where}, which needs {TEMPLATE_ENV}: set it to a "
            f"preset name, 'chat' (the guard's chat template), or a file whose template has {{response}}"
        )
    template, template_name = read_template_spec(template_spec)
    return GuardModelJudge(spec, template, template_name=template_name, **options)


def _load_walledeval_judge(class_name: str) -> Judge:
    from slowed.judges.walledeval_adapter import WalledEvalJudge

    try:
        import walledeval.judge as walledeval_judges
    except ImportError as error:
        raise ImportError(
            f"judge spec 'walledeval:{class_name}' needs the optional walledeval package: "
            f'pip install "slowed[walledeval]" && pip install --no-deps walledeval==0.2.1 ({error})'
        ) from error
    judge_class = getattr(walledeval_judges, class_name, None)
    if not isinstance(judge_class, type):
        raise ValueError(
            f"walledeval.judge has no judge class {class_name!r}; choose one of {walledeval_judges.__all__}"
        )
    try:
        return WalledEvalJudge(judge_class())
    except TypeError as error:
        raise ValueError(
            f"walledeval.judge.{class_name} cannot be built without arguments ({error}); build it in Python "
            "and wrap it: slowed.judges.WalledEvalJudge(walledeval.judge.{class_name}(...))"
        ) from error
