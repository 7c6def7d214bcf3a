"""SLowEDConfig: `trl.SFTConfig` plus every SLowED knob, validated on construction.

The knobs (see the paper, arXiv 2508.09666, and docs/DESIGN.md section 1):

- Low-Entropy Masking (LEM): ``entropy_mask_ratio`` (k), ``entropy_mask_scope``, ``entropy_source``, and
  ``entropy_mask_selection`` (which tokens: SLowED's lowest-entropy, or the highest/random controls).
- Slow Tuning (ST): ``slow_tuning_tau`` (τ), ``slow_tuning_scope``, ``slow_tuning_interval``.

With ``entropy_mask_ratio=0`` and ``slow_tuning_tau=None`` (the defaults) training is exactly stock SFT.

Values may arrive as strings (``TrlParser`` from the command line, or a YAML value such as ``1e-3`` that
YAML 1.1 reads as a string): numeric strings are parsed, and every value is checked in ``__post_init__``
(by `slowed.knobs`, the one validation of each knob) with an error naming the option, the bad value and the
allowed range; the combinations that cannot work are refused there too.

Precision: like ``trl.SFTConfig`` in TRL 1.16, ``bf16`` defaults to True whenever ``fp16`` is not set,
also on CPU, where transformers then trains under CPU bfloat16 autocast. SLowEDConfig keeps that default
so it stays a drop-in replacement; pass ``bf16=False`` for float32 runs (the tests do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import SFTConfig

from slowed.jsonio import read_json
from slowed.knobs import (
    ENTROPY_SOURCES,
    MASK_SCOPES,
    MASK_SELECTIONS,
    SLOW_TUNING_SCOPES,
    parse_choice,
    parse_entropy_mask_ratio,
    parse_slow_tuning_interval,
    parse_slow_tuning_tau,
)

# The knobs recorded in `slowed_config.json` next to the trained weights.
SLOWED_FIELDS: tuple[str, ...] = (
    "entropy_mask_ratio",
    "entropy_mask_selection",
    "entropy_mask_scope",
    "entropy_source",
    "slow_tuning_tau",
    "slow_tuning_scope",
    "slow_tuning_interval",
)


def deepspeed_zero_stage(deepspeed: Any) -> int | None:
    """The ZeRO stage of a `TrainingArguments.deepspeed` value (a dict or a JSON file path), or None if unset.

    An unreadable file or a missing ``zero_optimization.stage`` gives None (transformers reports such files).
    """
    if isinstance(deepspeed, (str, Path)):
        try:
            deepspeed = read_json(deepspeed)
        except (OSError, ValueError):
            return None
    if not isinstance(deepspeed, dict):
        return None
    stage = (deepspeed.get("zero_optimization") or {}).get("stage")
    return stage if isinstance(stage, int) else None


@dataclass
class SLowEDConfig(SFTConfig):
    r"""
    Configuration for `slowed.trainer.SLowEDTrainer`: every `trl.SFTConfig` option plus the SLowED knobs.

    Parameters:
        entropy_mask_ratio (`float`, defaults to `0.0`):
            Low-Entropy Masking ratio k in [0, 1): the floor(k·n) lowest-entropy of the n eligible tokens of each
            scope are dropped from the loss. 0 disables LEM. Eligible = target tokens that carry loss
            (labels != -100): the completion with TRL's default completion-only loss; prompt tokens too with
            `completion_only_loss=False` or a language-modelling dataset (the trainer then warns).
        entropy_mask_selection (`str`, defaults to `"lowest"`):
            Which tokens are dropped at rate k: `"lowest"` entropy (SLowED), or the controls `"highest"` entropy
            and `"random"` (uniform and seeded, so runs and resumes repeat: online from `seed`, the optimizer step,
            the micro-batch and the process; initial from `seed` and the example's position in the training set,
            independent of batching).
        entropy_mask_scope (`str`, defaults to `"sequence"`):
            Where the k-quantile is taken: `"sequence"` (each sequence on its own; independent of batch size,
            gradient accumulation and world size) or `"batch"` (over each micro-batch).
        entropy_source (`str`, defaults to `"online"`):
            `"online"`: entropies of the current student, from the training forward pass itself.
            `"initial"`: entropies of the frozen initial student, computed once before training; the masked
            tokens are applied as -100 labels by the masking collator (no training-time cost).
        slow_tuning_tau (`float` or `None`, defaults to `None`):
            Slow Tuning radius τ > 0: ‖W − W0‖_F is projected back to τ when it exceeds it. None disables ST.
        slow_tuning_scope (`str`, defaults to `"global"`):
            `"global"` (one norm over all adapted modules) or `"module"` (each module capped on its own).
        slow_tuning_interval (`str` or `int`, defaults to `"epoch"`):
            When to project: `"epoch"`, `"step"` (every optimizer step) or a positive integer N (every N
            optimizer steps and at the last step). Numeric strings are parsed to int.

    Combinations refused on construction (only when they matter, i.e. with k > 0):
        - `entropy_source="initial"` with `packing=True`: packing merges and cuts the sequences after the
          masks would be computed per sequence.
        - `entropy_source="initial"` with `entropy_mask_scope="batch"`: the initial masks are computed once,
          but a batch-scope mask depends on which sequences share a micro-batch, i.e. on the shuffling order.
        - `entropy_source="initial"` with DeepSpeed ZeRO-3 (`deepspeed` config with `zero_optimization.stage`
          3): the initial student scores the training set in the trainer's constructor, before DeepSpeed
          gathers the partitioned weights. Use `entropy_source="online"` or ZeRO stage 0-2.
        - sequence-scope LEM with `packing=True, packing_strategy="wrapped"`: wrapped packing concatenates
          documents and cuts them at `max_length` without segment boundaries, so a packed row of several
          documents would count as one sequence. Use `packing_strategy="bfd"` (segments are kept: each
          packed document is its own sequence) or `entropy_mask_scope="batch"`.
        - online LEM with `label_smoothing_factor > 0`: TRL's label smoothing recomputes the loss from full
          logits, which would bypass the mask.
    `loss_type="dft"` composes with LEM: DFT reweights each kept token by its (detached) probability and the
    masked tokens contribute nothing; the loss is still divided by the number of kept tokens.
    """

    entropy_mask_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Low-Entropy Masking ratio k in [0, 1): share of the eligible completion tokens, lowest "
            "entropy first, dropped from the loss (per `entropy_mask_scope`). 0 disables LEM."
        },
    )
    entropy_mask_selection: str = field(
        default="lowest",
        metadata={
            "help": "Which tokens LEM drops at rate k: 'lowest' entropy (SLowED), or the controls 'highest' "
            "entropy and 'random' (seeded).",
            "choices": list(MASK_SELECTIONS),
        },
    )
    entropy_mask_scope: str = field(
        default="sequence",
        metadata={
            "help": "Scope of the LEM k-quantile: 'sequence' (per sequence; independent of batch size, "
            "gradient accumulation and world size) or 'batch' (per micro-batch).",
            "choices": list(MASK_SCOPES),
        },
    )
    entropy_source: str = field(
        default="online",
        metadata={
            "help": "Entropies LEM ranks tokens by: 'online' (the current student, from the same forward pass) "
            "or 'initial' (the frozen initial student, scored once before training and applied as -100 labels "
            "by the masking collator).",
            "choices": list(ENTROPY_SOURCES),
        },
    )
    slow_tuning_tau: float | None = field(
        default=None,
        metadata={
            "help": "Slow Tuning radius τ > 0 (Frobenius norm of the update W − W0; with LoRA s·B·A): the update "
            "is scaled back onto the τ-sphere whenever it grows beyond it. None disables Slow Tuning."
        },
    )
    slow_tuning_scope: str = field(
        default="global",
        metadata={
            "help": "Slow Tuning norm scope: 'global' (one norm over all adapted modules) or 'module' (each "
            "module capped at τ on its own).",
            "choices": list(SLOW_TUNING_SCOPES),
        },
    )
    slow_tuning_interval: str = field(
        default="epoch",
        metadata={
            "help": "When Slow Tuning projects: 'epoch' (end of every epoch), 'step' (every optimizer step) or a "
            "positive integer N (every N optimizer steps and at the last step)."
        },
    )

    def __post_init__(self) -> None:
        self.entropy_mask_ratio = parse_entropy_mask_ratio(self.entropy_mask_ratio)
        self.entropy_mask_selection = parse_choice(
            "entropy_mask_selection", self.entropy_mask_selection, MASK_SELECTIONS
        )
        self.entropy_mask_scope = parse_choice("entropy_mask_scope", self.entropy_mask_scope, MASK_SCOPES)
        self.entropy_source = parse_choice("entropy_source", self.entropy_source, ENTROPY_SOURCES)
        self.slow_tuning_tau = parse_slow_tuning_tau(self.slow_tuning_tau)
        self.slow_tuning_scope = parse_choice("slow_tuning_scope", self.slow_tuning_scope, SLOW_TUNING_SCOPES)
        self.slow_tuning_interval = parse_slow_tuning_interval(self.slow_tuning_interval)
        self._check_deepspeed()  # before super(), which imports deepspeed for a `deepspeed` config
        super().__post_init__()
        self._check_combinations()

    @property
    def uses_online_lem(self) -> bool:
        """True when the loss masks by the current student's entropies (k > 0, source 'online')."""
        return self.entropy_mask_ratio > 0 and self.entropy_source == "online"

    @property
    def uses_initial_lem(self) -> bool:
        """True when the collator masks by the frozen initial student's entropies (k > 0, source 'initial')."""
        return self.entropy_mask_ratio > 0 and self.entropy_source == "initial"

    def slowed_dict(self) -> dict[str, Any]:
        """The SLowED knobs as a JSON-ready dict (recorded next to the trained weights)."""
        return {name: getattr(self, name) for name in SLOWED_FIELDS}

    def _check_deepspeed(self) -> None:
        if self.uses_initial_lem and deepspeed_zero_stage(self.deepspeed) == 3:
            raise ValueError(
                "SLowEDConfig: `entropy_source='initial'` cannot be combined with DeepSpeed ZeRO-3 (`deepspeed` "
                f"config {self.deepspeed!r} has zero_optimization.stage 3): the initial student scores the training "
                "set before DeepSpeed is set up, when ZeRO-3 weights are still partitioned. Use "
                "`entropy_source='online'` or ZeRO stage 0-2."
            )

    def _check_combinations(self) -> None:
        if self.uses_initial_lem and self.packing:
            raise ValueError(
                "SLowEDConfig: `entropy_source='initial'` cannot be combined with `packing=True`: the initial "
                "keep-masks are computed per tokenised sequence, and packing merges and cuts sequences. Set "
                "`packing=False` or use `entropy_source='online'`."
            )
        if self.uses_initial_lem and self.entropy_mask_scope == "batch":
            raise ValueError(
                "SLowEDConfig: `entropy_source='initial'` requires `entropy_mask_scope='sequence'`: the initial "
                "masks are computed once before training, while a batch-scope mask depends on which sequences "
                "share a micro-batch, i.e. on the shuffling order. Use `entropy_mask_scope='sequence'` or "
                "`entropy_source='online'`."
            )
        if (
            self.entropy_mask_ratio > 0
            and self.entropy_mask_scope == "sequence"
            and self.packing
            and self.packing_strategy == "wrapped"
        ):
            raise ValueError(
                f"SLowEDConfig: sequence-scope Low-Entropy Masking (`entropy_mask_ratio={self.entropy_mask_ratio}`) "
                "cannot be combined with `packing=True, packing_strategy='wrapped'`: wrapped packing concatenates "
                "documents and cuts them at max_length without segment boundaries, so a packed row of several "
                "documents would count as one sequence. Use `packing_strategy='bfd'` (each packed document stays a "
                "sequence) or `entropy_mask_scope='batch'`."
            )
        if self.uses_online_lem and self.label_smoothing_factor > 0:
            raise ValueError(
                f"SLowEDConfig: `label_smoothing_factor={self.label_smoothing_factor}` cannot be combined with "
                f"online Low-Entropy Masking (`entropy_mask_ratio={self.entropy_mask_ratio}`): TRL computes a "
                "label-smoothed loss from the full logits, which would bypass the mask. Set "
                "`label_smoothing_factor=0` or use `entropy_source='initial'` (the mask is then in the labels)."
            )
