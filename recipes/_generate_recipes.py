"""Write every recipe variant from one table, as lm-eval's tasks/bbh/_generate_configs.py writes its task YAMLs.

Each student's `slowed.yaml` is the hand-written source of everything but the SLowED knobs: model, data, LoRA and
training settings with their comments. This script rewrites, in that file and in the three variants it derives
from it (`std_cot`, `no_slow_tuning`, `no_masking`), the three parts that depend on the variant: the title line
and the `--config` path of the header, the SLowED knobs block (values and comments, from `STUDENTS` and
`VARIANTS`), and `output_dir`. So the variants differ from `slowed.yaml` in exactly k, τ and `output_dir`, and
their comments cannot drift.

    python recipes/_generate_recipes.py            # write the YAMLs
    python recipes/_generate_recipes.py --check    # exit 1 if a YAML differs from what this would write
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

RECIPES = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Variant:
    title: str
    masking: bool  # Low-Entropy Masking on (k > 0)
    slow_tuning: bool  # Slow Tuning on (τ set)


@dataclass(frozen=True)
class Student:
    k: float
    tau: float
    tau_note: tuple[str, ...]  # why this τ (comment lines after "τ = <tau>: ")


VARIANTS: dict[str, Variant] = {
    "slowed": Variant("SLowED (full method): Low-Entropy Masking (k > 0) + Slow Tuning (τ set).", True, True),
    "std_cot": Variant(
        "Std-CoT baseline: plain SFT on teacher rationale + answer (k = 0, no Slow Tuning).", False, False
    ),
    "no_slow_tuning": Variant(
        "Ablation w/o Slow Tuning: Low-Entropy Masking only (k > 0, τ = null).", True, False
    ),
    "no_masking": Variant("Ablation w/o Low-Entropy Masking: Slow Tuning only (k = 0, τ set).", False, True),
}
_CALIBRATE = (
    "Calibrate τ for your setup: run with --slow_tuning_tau 1e9 (never binds, logs ‖ΔW‖ every epoch) and",
    "pick a τ below the epoch-1 norm (see recipes/README.md).",
)
STUDENTS: dict[str, Student] = {
    "qwen2.5-1.5b": Student(
        0.2,
        7.0,
        (
            "0.5·sqrt(#adapted modules) = 0.5·sqrt(196): an RMS update of 0.5 (Frobenius) per adapted matrix.",
            *_CALIBRATE,
        ),
    ),
    "llama-3.2-1b": Student(
        0.2,
        5.3,
        (
            "0.5·sqrt(#adapted modules) = 0.5·sqrt(112): an RMS update of 0.5 (Frobenius) per adapted matrix.",
            *_CALIBRATE,
        ),
    ),
    "bloom-1.1b": Student(
        0.2,
        4.9,
        (
            "0.5·sqrt(#adapted modules) = 0.5·sqrt(96): an RMS update of 0.5 (Frobenius) per adapted matrix.",
            *_CALIBRATE,
        ),
    ),
    "smollm2-135m": Student(
        0.2, 1.0, ("measured here, plain SFT moves ‖ΔW‖ to ~2-3 in the first epoch, so τ binds every epoch.",)
    ),
}
_KNOBS_BLOCK = re.compile(r"^# SLowED knobs.*?^slow_tuning_interval:[^\n]*\n", re.MULTILINE | re.DOTALL)


def knobs_block(student: Student, variant: Variant) -> str:
    """The SLowED knobs section of one recipe: why each knob is set as it is, then the six knobs."""
    lines = ["# SLowED knobs. k and τ are OUR CHOICE: the public text of the paper does not give them."]
    if variant.masking:
        lines.append(
            f"# k = {student.k}: the {student.k:.0%} lowest-entropy target tokens of each completion leave the loss."
        )
    else:
        lines.append(
            "# k = 0: Low-Entropy Masking off (entropy_mask_scope and entropy_source are then unused)."
        )
    if variant.slow_tuning:
        lines += [
            f"# τ = {student.tau}: {student.tau_note[0]}",
            *(f"# {line}" for line in student.tau_note[1:]),
        ]
    else:
        lines.append(
            "# τ = null: Slow Tuning off (slow_tuning_scope and slow_tuning_interval are then unused)."
        )
    k = student.k if variant.masking else 0.0
    tau = student.tau if variant.slow_tuning else "null"
    lines += [
        f"entropy_mask_ratio: {k}",
        "entropy_mask_scope: sequence        # k-quantile per sequence: independent of batch size and world size",
        "entropy_source: online              # entropies of the current student, from the training forward pass",
        f"slow_tuning_tau: {tau}",
        "slow_tuning_scope: global           # one norm over all adapted modules",
        "slow_tuning_interval: epoch         # project ΔW back onto the τ-sphere after every epoch",
    ]
    return "\n".join(lines) + "\n"


def render(model: str, name: str, source: str) -> str:
    """Recipe `name` of `model` from the text of its `slowed.yaml`."""
    student, variant = STUDENTS[model], VARIANTS[name]
    if len(_KNOBS_BLOCK.findall(source)) != 1:
        raise ValueError(
            f"recipes/{model}/slowed.yaml: expected one '# SLowED knobs' ... 'slow_tuning_interval:' block"
        )
    text = _KNOBS_BLOCK.sub(lambda _: knobs_block(student, variant), source)
    student_title, _, _ = text.partition("\n")[0].partition(" — ")
    text = text.replace(text.partition("\n")[0], f"{student_title} — {variant.title}", 1)
    text = text.replace(f"--config recipes/{model}/slowed.yaml", f"--config recipes/{model}/{name}.yaml")
    return re.sub(
        r"^output_dir: .*$", f"output_dir: outputs/{model}/{name}", text, count=1, flags=re.MULTILINE
    )


def generate() -> dict[Path, str]:
    """Every generated recipe path and its text."""
    files = {}
    for model in STUDENTS:
        source = (RECIPES / model / "slowed.yaml").read_text(encoding="utf-8")
        for name in VARIANTS:
            files[RECIPES / model / f"{name}.yaml"] = render(model, name, source)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report YAMLs that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = [
        path
        for path, text in generate().items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(
                f"{path.relative_to(RECIPES.parent)} differs from recipes/_generate_recipes.py's output",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path, text in generate().items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
