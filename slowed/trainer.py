"""SLowEDTrainer: `trl.SFTTrainer` with Low-Entropy Masking (LEM) in the loss and Slow Tuning (ST).

Loss (online LEM, k > 0, training mode). TRL 1.16's fused LM head returns per-target-token ``log_probs``,
``entropy`` and ``label_mask`` (B×(T−1), aligned with ``labels[:, 1:]``) from one forward pass. The
keep-mask is built from the detached entropies (`slowed.masking.low_entropy_keep_mask`) and the log-probs of
the masked tokens are zeroed, exactly like TRL's ignored positions; TRL's own `compute_loss` then runs
unchanged on those outputs: loss = −Σ kept log p / N, its DFT variant, the cross-device multiply under
``average_tokens_across_devices``, the MoE auxiliary loss, and its metrics (``entropy``,
``mean_token_accuracy`` over all eligible tokens, ``num_tokens``).

Normalisation: N = ``num_items_in_batch`` counts the tokens *kept* over every micro-batch of the gradient
accumulation window (and over processes). That count depends only on the label masks
(`slowed.masking.kept_token_count`), so `_get_num_items_in_batch` computes it before any forward pass, and
k does not silently shrink the learning rate. With the per-sequence scope, bs 4 × GA 2 equals bs 8.

A *sequence* is one row of the batch or, in padding-free batches (TRL's ``seq_idx``: ``padding_free=True`` or
packing with ``packing_strategy="bfd"``), one packed segment. Wrapped packing has no segment boundaries, so
sequence-scope LEM refuses it (`SLowEDConfig`). The *eligible* tokens are the target tokens that carry loss
(``labels != -100``): the completion of a prompt-completion dataset (TRL's default ``completion_only_loss``), or
every token with ``completion_only_loss=False`` or a language-modelling dataset; the trainer warns once when
k > 0 and prompt tokens are in the loss.

Training guards (always on, also with the knobs off): a non-finite training loss stops training with a
`NonFiniteLossError` naming the optimizer step and the last good checkpoint, instead of going on with NaN weights
(stock Trainer would log a filtered loss and save them). A micro-batch without targets (every label -100)
contributes a loss of 0 and no gradient.

Evaluation losses are always TRL's plain NLL over all completion tokens (no masking), so eval losses stay
comparable across k and entropy sources.

Entropy source ``initial``: after TRL prepares the training set (tokenised, labels built, truncated), every
example is scored once with the frozen initial student (eval mode, no grad; with peft, adapters disabled) and
its per-token keep flags are stored in the column `slowed.collator.KEEP_COLUMN`, which the
`MaskingCollator` turns into -100 labels. The column is added to the signature columns (as TRL does for
``seq_lengths``), so ``remove_unused_columns`` may stay True. Each process scores the full set. The scoring runs
in the constructor, before DeepSpeed is set up, so ZeRO-3 (partitioned weights) is refused for this source.

With ``entropy_mask_ratio=0`` and ``slow_tuning_tau=None`` every override defers to `SFTTrainer`: the run is
exactly stock TRL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
import trl
from accelerate.utils import is_peft_model
from datasets import Dataset
from peft import LoraConfig, PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import TrainingArguments
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import get_config_model_id

import slowed
from slowed.collator import KEEP_COLUMN, NUM_MASKED_KEY, MaskingCollator
from slowed.config import SLowEDConfig
from slowed.jsonio import write_json
from slowed.masking import (
    keep_mask_by_sequence,
    kept_token_count,
    low_entropy_keep_mask,
    selection_scores,
    target_valid_and_segments,
    valid_by_sequence,
)
from slowed.models import resolve_model_path
from slowed.slow_tuning import (
    SlowTuningCallback,
    check_lora_projectable,
    global_norm,
    is_zero_delta_init,
    lora_delta_norms,
)

logger = logging.getLogger(__name__)

SLOWED_CONFIG_NAME = "slowed_config.json"
MASKED_FRACTION_KEY = "slowed/masked_fraction"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; raised on every process so none is left waiting in a collective."""


class _LowEntropyMaskedForward:
    """Callable standing in for the model inside `SFTTrainer.compute_loss`.

    Fused-head calls (``fused_lm_head=True``) return the model's outputs with ``log_probs`` zeroed at the
    masked tokens (as at TRL's ignored positions); other calls pass through. The last keep and valid masks
    are kept for the metrics.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        ratio: float,
        scope: str,
        seq_idx: torch.Tensor | None,
        selection: str = "lowest",
        generator: torch.Generator | None = None,
    ):
        self.model, self.ratio, self.scope, self.seq_idx = model, ratio, scope, seq_idx
        self.selection, self.generator = selection, generator
        self.keep: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self.model(*args, **kwargs)
        if kwargs.get("fused_lm_head"):
            self.valid = outputs.label_mask.bool()
            scores = selection_scores(outputs.entropy, self.selection, self.generator)
            self.keep = keep_mask_by_sequence(scores, self.valid, self.ratio, self.scope, self.seq_idx)
            outputs.log_probs = outputs.log_probs.masked_fill(~self.keep, 0.0)
        return outputs


# ---------------------------------------------------------------------------------------------- helpers


def _as_slowed_config(args: TrainingArguments | None, model: Any) -> SLowEDConfig:
    """`args` as a SLowEDConfig (SLowED knobs at their defaults when converted from another config)."""
    if isinstance(args, SLowEDConfig):
        return args
    if args is None:
        model_name = model if isinstance(model, str) else get_config_model_id(model.config)
        return SLowEDConfig(f"{model_name.split('/')[-1]}-SLowED")
    # Not `to_dict()`: it replaces every `*_token` value (hub_token, eos_token, pad_token) by a placeholder.
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    return SLowEDConfig(**values)


def _targets_lm_head(target_modules: Any) -> bool:
    if isinstance(target_modules, str):
        return target_modules == "lm_head" or target_modules.endswith(".lm_head")
    return any(str(name) == "lm_head" or str(name).endswith(".lm_head") for name in target_modules or ())


def _check_lora_init(peft_config: PeftConfig, args: SLowEDConfig) -> None:
    """Refuse LoRA inits that start away from the initial student when Slow Tuning or `initial` LEM needs it."""
    init = getattr(peft_config, "init_lora_weights", True)
    if not isinstance(peft_config, LoraConfig) or is_zero_delta_init(init):
        return
    users = []
    if args.slow_tuning_tau is not None:
        users.append(
            f"Slow Tuning (slow_tuning_tau={args.slow_tuning_tau}) measures ΔW = s·B·A against the base"
        )
    if args.uses_initial_lem:
        users.append("entropy_source='initial' scores with the adapters disabled")
    if users:
        raise ValueError(
            f"LoraConfig(init_lora_weights={init!r}) is not supported here: {' and '.join(users)}, which is the "
            "initial model only when the adapter starts at s·B·A = 0 on an untouched base weight. This init "
            "rewrites the base to W − s·B₀·A₀ (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA) or starts at a random "
            "s·B·A ≠ 0 (False). Use init_lora_weights=True (or 'gaussian')."
        )


def check_peft_config(peft_config: PeftConfig | None, args: SLowEDConfig) -> None:
    """Refuse, before any model or dataset work, a `peft_config` SLowED cannot train as asked.

    Always: LoRA targeting ``lm_head`` (TRL's fused LM head reads ``lm_head.weight`` directly and would
    never train the adapter). With Slow Tuning on or the ``initial`` entropy source: a LoRA
    ``init_lora_weights`` that does not start at s·B·A = 0 on an untouched base (PiSSA, OLoRA, CorDA, LoftQ,
    LoRA-GA, False; see `slowed.slow_tuning.ZERO_DELTA_INITS`), since ‖s·B·A‖ and the adapters-disabled model
    would then not be the distance from / the initial student. With Slow Tuning on: any non-LoRA adapter, DoRA
    (ΔW is not s·B·A), and ``modules_to_save`` (fully trained copies that Slow Tuning would not keep near W0).
    """
    if peft_config is None:
        return
    if _targets_lm_head(getattr(peft_config, "target_modules", None)):
        raise ValueError(
            f"LoRA on lm_head is not supported (target_modules={peft_config.target_modules!r}): TRL's fused LM "
            "head computes log-probabilities from lm_head.weight directly, so the adapter would never train. "
            "Remove 'lm_head' from target_modules."
        )
    _check_lora_init(peft_config, args)
    if args.slow_tuning_tau is None:
        return
    if not isinstance(peft_config, LoraConfig):
        raise ValueError(
            f"Slow Tuning (slow_tuning_tau={args.slow_tuning_tau}) needs a LoRA adapter (ΔW = s·B·A) or full "
            f"fine-tuning; got a {type(peft_config).__name__}. Use peft.LoraConfig or set slow_tuning_tau=None."
        )
    if peft_config.use_dora:
        raise ValueError(
            f"Slow Tuning (slow_tuning_tau={args.slow_tuning_tau}) cannot project DoRA adapters (use_dora=True): "
            "DoRA rescales W0 + ΔW by a learned magnitude, so ΔW is not s·B·A. Set use_dora=False."
        )
    if peft_config.modules_to_save:
        raise ValueError(
            f"Slow Tuning (slow_tuning_tau={args.slow_tuning_tau}) constrains only the LoRA factors, but "
            f"modules_to_save={peft_config.modules_to_save!r} would be fully trained without bound. Remove "
            "modules_to_save or set slow_tuning_tau=None."
        )


# ---------------------------------------------------------------------------------------------- trainer


class SLowEDTrainer(SFTTrainer):
    """`trl.SFTTrainer` with SLowED's Low-Entropy Masking and Slow Tuning (knobs in `SLowEDConfig`).

    Takes the same arguments as `SFTTrainer`; `args` may be a `SLowEDConfig` (other configs are converted,
    with the SLowED knobs off). On construction it refuses model/adapter combinations that cannot work
    (see `check_peft_config`, and `slowed.slow_tuning.check_lora_projectable` on the wrapped model), adds a
    `SlowTuningCallback` when ``slow_tuning_tau`` is set, and for ``entropy_source="initial"`` scores the
    training set with the initial student and wraps the collator in a `MaskingCollator`.

    Logged besides TRL's metrics: ``slowed/masked_fraction`` (LEM-masked / eligible tokens over the logging
    window, all processes) and, in the first log after each Slow Tuning check, ``slowed/delta_norm_before`` /
    ``slowed/delta_norm_after`` (global ‖ΔW‖_F). Every saved model or checkpoint gets a ``slowed_config.json`` with the knobs.
    """

    _tag_names: ClassVar[list[str]] = [*SFTTrainer._tag_names, "slowed"]
    _name = "SLowED"
    _paper: ClassVar[dict[str, str]] = {
        "title": "Slow Tuning and Low-Entropy Masking for Safe Chain-of-Thought Distillation",
        "id": "2508.09666",
        "citation": textwrap.dedent("""\
            @misc{slowed2025,
                title         = {{Slow Tuning and Low-Entropy Masking for Safe Chain-of-Thought Distillation}},
                year          = 2025,
                eprint        = {2508.09666},
                archivePrefix = {arXiv},
                url           = {https://arxiv.org/abs/2508.09666},
            }"""),
    }

    def __init__(
        self,
        model: Any,
        args: TrainingArguments | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        compute_loss_func: Any = None,
        compute_metrics: Any = None,
        callbacks: list[transformers.TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: Any = None,
        preprocess_logits_for_metrics: Any = None,
        quantization_config: Any = None,
        peft_config: PeftConfig | None = None,
        formatting_func: Any = None,
    ) -> None:
        if isinstance(model, str):
            model = resolve_model_path(model)
        args = _as_slowed_config(args, model)
        check_peft_config(peft_config, args)
        if compute_loss_func is not None and args.uses_online_lem:
            raise ValueError(
                f"compute_loss_func cannot be combined with online Low-Entropy Masking (entropy_mask_ratio="
                f"{args.entropy_mask_ratio}): the custom loss would bypass the mask. Drop compute_loss_func or set "
                "entropy_mask_ratio=0."
            )
        if args.slow_tuning_tau is not None and any(
            isinstance(c, SlowTuningCallback) for c in callbacks or ()
        ):
            raise ValueError(
                "A SlowTuningCallback was passed in `callbacks` while slow_tuning_tau is set: the trainer adds its "
                "own, and two would project twice. Pass one or the other."
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        self._masked_window = [0, 0]  # [masked, eligible] LEM tokens since the last log, all processes
        self._random_mask_calls = (-1, 0)  # (optimizer step, loss calls within it) seeding random masks
        self._slow_tuning_checks_logged = 0
        self._initial_masked_total = [0, 0]  # [masked, eligible] over the training set (initial source)
        self._check_parallelism()
        self._warn_if_prompt_tokens_are_eligible()
        self.slow_tuning: SlowTuningCallback | None = None
        if args.slow_tuning_tau is not None:
            self._check_slow_tuning_model()
            self.slow_tuning = SlowTuningCallback(
                args.slow_tuning_tau, args.slow_tuning_scope, args.slow_tuning_interval
            )
            self.add_callback(self.slow_tuning)
        if args.uses_initial_lem:
            self.train_dataset = self._add_initial_keep_masks(self.train_dataset)
            self.data_collator = MaskingCollator(self.data_collator)
        logger.info("SLowED knobs: %s", json.dumps(args.slowed_dict()))

    # ----------------------------------------------------------------------------------- construction checks

    def _check_parallelism(self) -> None:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.args.uses_initial_lem and plugin is not None and plugin.zero_stage == 3:
            raise ValueError(
                "entropy_source='initial' cannot be combined with DeepSpeed ZeRO-3 (set up by accelerate): the "
                "initial student scores the training set before DeepSpeed is set up, when ZeRO-3 weights are still "
                "partitioned. Use entropy_source='online' or ZeRO stage 0-2."
            )
        config = self.accelerator.parallelism_config
        if self.args.uses_online_lem and config is not None and (config.cp_enabled or config.sp_enabled):
            raise NotImplementedError(
                "Online Low-Entropy Masking is not implemented under context or sequence parallelism: the "
                "per-sequence quantile would be taken over each rank's shard. Use entropy_source='initial' or "
                "disable cp/sp."
            )

    def _warn_if_prompt_tokens_are_eligible(self) -> None:
        """Warn (once, here) when LEM is on and TRL puts the whole sequence, prompt included, in the loss."""
        if self.args.entropy_mask_ratio == 0 or self.completion_only_loss or self.args.assistant_only_loss:
            return
        logger.warning(
            "entropy_mask_ratio=%s with a loss over whole sequences (completion_only_loss=%s, or a language-modelling "
            "dataset): prompt tokens carry loss, so they are eligible for Low-Entropy Masking and k is a share of "
            "prompt and completion tokens together. For SLowED's completion-only masking use a prompt-completion "
            "dataset with completion_only_loss unset or True (or assistant_only_loss=True).",
            self.args.entropy_mask_ratio,
            self.args.completion_only_loss,
        )

    def _check_slow_tuning_model(self) -> None:
        """With τ set and a peft model: `check_lora_projectable`, the verdict the callback gives too."""
        if any(isinstance(module, BaseTunerLayer) for module in self.model.modules()):
            check_lora_projectable(self.model)  # full fine-tuning: W0 is snapshotted by the callback

    # ------------------------------------------------------------------------------- initial entropy source

    @torch.no_grad()
    def _initial_keep_flags(self, input_ids: list[list[int]], labels: list[list[int]]) -> list[list[int]]:
        """Per-token keep flags (1 keep, 0 mask; position 0 always 1) from the frozen initial student.

        Sequences are scored in length-sorted batches of ``per_device_eval_batch_size``, padded by TRL's collator
        (right padding, -100 labels), through the fused LM head (per-token entropy without the B×T×V logits); the
        mask is per sequence, so padding and batching do not change it. The ``"random"`` control draws each example's scores from a generator seeded by
        (``seed``, the example's position in the prepared training set), so it does not depend on batching either.
        """
        model = self.model
        device = next(model.parameters()).device
        collate = DataCollatorForLanguageModeling(pad_token_id=self._tokenizer.pad_token_id)  # right padding
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        flags: list[list[int]] = [[] for _ in input_ids]
        was_training = model.training
        model.eval()
        adapters_off = model.disable_adapter() if is_peft_model(model) else contextlib.nullcontext()
        try:
            with adapters_off:
                for start in range(0, len(order), self.args.per_device_eval_batch_size):
                    rows = order[start : start + self.args.per_device_eval_batch_size]
                    batch = collate([{"input_ids": input_ids[i], "labels": labels[i]} for i in rows])
                    outputs = model(
                        **{key: value.to(device) for key, value in batch.items()}, fused_lm_head=True
                    )
                    valid = outputs.label_mask.bool()
                    scores = self._initial_scores(
                        outputs.entropy.float(), rows, [len(input_ids[i]) for i in rows]
                    )
                    keep = low_entropy_keep_mask(scores, valid, self.args.entropy_mask_ratio, "sequence")
                    self._initial_masked_total[0] += int((valid & ~keep).sum())
                    self._initial_masked_total[1] += int(valid.sum())
                    for j, i in enumerate(rows):
                        flags[i] = [1, *keep[j, : len(input_ids[i]) - 1].int().tolist()]
        finally:
            model.train(was_training)
        return flags

    def _initial_scores(self, entropy: torch.Tensor, rows: list[int], lengths: list[int]) -> torch.Tensor:
        """B×(T−1) selection scores of a scoring batch: `selection_scores`, with per-example draws for "random".

        Args:
            entropy: B×(T−1) entropies (nats) of the batch's examples.
            rows: position of each batch row's example in the training set.
            lengths: token count of each example (its row has ``length − 1`` targets; the rest is padding).
        """
        selection = self.args.entropy_mask_selection
        if selection != "random":
            return selection_scores(entropy, selection)
        scores = torch.zeros(entropy.shape, dtype=torch.float64, device=entropy.device)
        for j, (row, length) in enumerate(zip(rows, lengths, strict=True)):
            generator = torch.Generator().manual_seed(hash((self.args.seed, row)) % 2**63)
            scores[j, : length - 1] = selection_scores(
                entropy[j : j + 1, : length - 1], selection, generator
            )[0]
        return scores

    def _add_initial_keep_masks(self, dataset: Any) -> Any:
        if not isinstance(dataset, Dataset):
            raise ValueError(
                f"entropy_source='initial' needs a map-style datasets.Dataset to store the keep masks in; got "
                f"{type(dataset).__name__}. Use entropy_source='online' for streaming datasets."
            )
        missing = {"input_ids", "labels"} - set(dataset.column_names)
        if missing:
            raise ValueError(
                f"entropy_source='initial' needs the prepared columns input_ids and labels; the training set lacks "
                f"{sorted(missing)} (with dataset_kwargs={{'skip_prepare_dataset': True}}, provide them yourself)."
            )
        flags = self._initial_keep_flags(list(dataset["input_ids"]), list(dataset["labels"]))
        if KEEP_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(KEEP_COLUMN)
        return dataset.add_column(KEEP_COLUMN, flags)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.args.uses_initial_lem and KEEP_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, KEEP_COLUMN]

    # ------------------------------------------------------------------------------------------------- loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | int | None:
        """Online LEM: the number of tokens *kept* over the accumulation window, else the base count.

        The base class counts ``shift_labels != -100`` when a batch has ``shift_labels``; it is handed, per
        micro-batch, a vector with one entry per kept token, so its gather across processes and its divisions
        (tensor/context/sequence parallel sizes) apply to the kept count unchanged.
        """
        if not (self.args.uses_online_lem and batch_samples and "labels" in batch_samples[0]):
            return super()._get_num_items_in_batch(batch_samples, device)
        kept_counts = []
        for batch in batch_samples:
            valid, seq_idx = target_valid_and_segments(batch)
            scope = self.args.entropy_mask_scope
            valid_rows = valid if scope == "batch" else valid_by_sequence(valid, seq_idx)
            kept = int(kept_token_count(valid_rows, self.args.entropy_mask_ratio, scope))
            kept_counts.append(
                {"labels": batch["labels"], "shift_labels": torch.zeros(kept, dtype=torch.long)}
            )
        return super()._get_num_items_in_batch(kept_counts, device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss; with online LEM in training, over the kept tokens only (see the module docstring)."""
        training = self.model.training
        num_masked = inputs.pop(NUM_MASKED_KEY, None)
        if num_masked is not None and training:
            num_kept = (inputs["labels"][..., 1:] != -100).sum()
            self._record_masked(num_masked.to(num_kept.device), num_masked.to(num_kept.device) + num_kept)
        if not (self.args.uses_online_lem and training):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if num_items_in_batch is None:
            raise RuntimeError(
                "Online Low-Entropy Masking needs `num_items_in_batch` (the kept-token count) from the Trainer, "
                "but got None: the model's forward does not accept loss kwargs."
            )
        _, seq_idx = target_valid_and_segments(inputs)
        masked_forward = _LowEntropyMaskedForward(
            model,
            self.args.entropy_mask_ratio,
            self.args.entropy_mask_scope,
            seq_idx,
            self.args.entropy_mask_selection,
            self._random_mask_generator(),
        )
        result = super().compute_loss(masked_forward, inputs, return_outputs, num_items_in_batch)
        valid, keep = masked_forward.valid, masked_forward.keep
        self._record_masked((valid & ~keep).sum(), valid.sum())
        return result

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """`Trainer.training_step`, then stop on a non-finite loss (see `_raise_on_non_finite_loss`)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._raise_on_non_finite_loss(loss)
        return loss

    def _raise_on_non_finite_loss(self, loss: torch.Tensor) -> None:
        """Raise `NonFiniteLossError` on every process when any process's micro-batch loss is NaN or ±inf."""
        non_finite = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
        if self.accelerator.num_processes > 1:
            non_finite = self.accelerator.reduce(non_finite, reduction="sum")
        if non_finite.item() == 0:
            return
        step = self.state.global_step + 1
        raise NonFiniteLossError(
            f"Non-finite training loss ({loss.item()} on process {self.accelerator.process_index}) at optimizer step "
            f"{step} (epoch {self.state.epoch or 0:.2f}); training stopped. Last good checkpoint: "
            f"{self._last_good_checkpoint(step)}. Lower the learning rate, check the data of this step, or train in "
            "float32 (bf16=False)."
        )

    def _last_good_checkpoint(self, failed_step: int) -> str:
        """The newest ``checkpoint-N`` under ``output_dir`` saved before step ``failed_step − 1``, or "none saved".

        The weights saved at step ``failed_step − 1`` are the ones that produced the non-finite loss.
        """
        output_dir = Path(self.args.output_dir)
        steps = [
            int(match.group(1))
            for path in (output_dir.iterdir() if output_dir.is_dir() else ())
            if path.is_dir() and (match := _CHECKPOINT_DIR.match(path.name))
        ]
        good = [step for step in steps if step < failed_step - 1]
        return str(output_dir / f"checkpoint-{max(good)}") if good else "none saved"

    def _random_mask_generator(self) -> torch.Generator | None:
        """For ``entropy_mask_selection="random"``: a CPU generator seeded by (``seed``, optimizer step, micro-batch
        within the step, process), so a run, its resumption and a rerun draw the same masks; else None. (Python
        hashes tuples of ints the same way in every process and run.)"""
        if self.args.entropy_mask_selection != "random":
            return None
        step = self.state.global_step
        self._random_mask_calls = (
            step,
            self._random_mask_calls[1] + 1 if self._random_mask_calls[0] == step else 0,
        )
        seed = hash((self.args.seed, step, self._random_mask_calls[1], self.accelerator.process_index))
        return torch.Generator().manual_seed(seed % 2**63)

    def _record_masked(self, num_masked: torch.Tensor, num_valid: torch.Tensor) -> None:
        """Add one micro-batch's [LEM-masked, eligible] token counts, summed over all processes.

        A sum-reduce, not `gather_for_metrics`: that trims the last batch of an epoch to the dataset remainder,
        which drops other processes' counts. The padding rows that even out the last batch across processes are
        counted: they are in the loss. Every process calls this once per training micro-batch, as DDP requires.
        """
        counts = torch.stack([num_masked, num_valid]).to(torch.int64)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        masked, valid = counts.tolist()
        self._masked_window[0] += masked
        self._masked_window[1] += valid

    # ---------------------------------------------------------------------------------------------- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's logging plus ``slowed/masked_fraction`` (training logs) and the norms of a new Slow Tuning check."""
        if self.model.training:
            masked, valid = self._masked_window
            if valid > 0:
                self._metrics["train"][MASKED_FRACTION_KEY] = [masked / valid]
            self._masked_window = [0, 0]
        # In any mode: when an epoch-end evaluation follows the last check, its log is the next one.
        if self.slow_tuning is not None and len(self.slow_tuning.history) > self._slow_tuning_checks_logged:
            logs.update(self.slow_tuning.last_logs)
            self._slow_tuning_checks_logged = len(self.slow_tuning.history)
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------- saving

    def slowed_record(self) -> dict[str, Any]:
        """The SLowED knobs and library versions, as written to ``slowed_config.json``."""
        record: dict[str, Any] = {
            **self.args.slowed_dict(),
            "versions": {
                "slowed": slowed.__version__,
                "trl": trl.__version__,
                "transformers": transformers.__version__,
            },
        }
        if self.args.uses_initial_lem:
            masked, valid = self._initial_masked_total
            record["initial_masked_tokens"] = masked
            record["initial_eligible_tokens"] = valid
        return record

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as `SFTTrainer` does, plus ``slowed_config.json`` (atomic; main process) in the same folder."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            write_json(
                Path(output_dir or self.args.output_dir) / SLOWED_CONFIG_NAME,
                self.slowed_record(),
                sort_keys=True,
            )

    def final_masked_fraction(self) -> tuple[float | None, str]:
        """The last logged ``slowed/masked_fraction``, else the initial-source count, else 0 when LEM is off;
        with where it came from."""
        logged = next(
            (
                entry[MASKED_FRACTION_KEY]
                for entry in reversed(self.state.log_history)
                if MASKED_FRACTION_KEY in entry
            ),
            None,
        )
        if logged is not None:
            return float(logged), MASKED_FRACTION_KEY
        masked, eligible = self._initial_masked_total
        if self.args.uses_initial_lem and eligible:
            return masked / eligible, "initial-student masks over the training set"
        if self.args.entropy_mask_ratio == 0:
            return 0.0, "Low-Entropy Masking off"
        return None, "not logged"

    def final_delta_norm(self) -> tuple[float | None, str]:
        """The final ‖ΔW‖_F and where it came from: the last Slow Tuning check, else measured on the LoRA weights.

        The callback's own history is read rather than the log history: a check at the end of the last epoch
        can come after the last training log.
        """
        if self.slow_tuning is not None and self.slow_tuning.history:
            step, result = self.slow_tuning.history[-1]
            return (
                result.norm_after,
                f"Slow Tuning check at step {step}; before projection {result.norm_before:.4f}",
            )
        try:
            return float(global_norm(lora_delta_norms(self.accelerator.unwrap_model(self.model)))), (
                "measured on the final LoRA weights"
            )
        except (
            ValueError
        ) as error:  # full fine-tuning without Slow Tuning, or a LoRA variant it cannot measure
            return None, f"not available: {error}"

    def final_facts(self) -> dict[str, Any]:
        """The run's final SLowED facts: masked fraction, ΔW norm (each with its source) and the optimizer step."""
        masked_fraction, masked_source = self.final_masked_fraction()
        delta_norm, delta_source = self.final_delta_norm()
        return {
            "masked_fraction": masked_fraction,
            "masked_fraction_source": masked_source,
            "delta_norm": delta_norm,
            "delta_norm_source": delta_source,
            "global_step": self.state.global_step,
        }
