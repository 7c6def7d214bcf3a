"""`SlowTuningCallback`: Slow Tuning during `transformers.Trainer` / `trl.SFTTrainer` training.

Optimizer state: a projection rescales the weights only. Adam's moments keep referring to the unscaled update
(the method's reading: the projection is a constraint, not a restart), so the next step's direction is
unchanged. An optimizer that keeps its own copy of the weights and writes it back would undo the projection:
DeepSpeed's fp32 master copy is rescaled too (`slowed.slow_tuning.distributed`); schedule-free optimizers
(``optim="schedule_free_*"``, whose z/x sequences are weight copies) are refused at train begin; apex/amp
O2-style master weights are not detectable here and unsupported. Under DDP every rank projects its own
identical replica.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from slowed.knobs import parse_slow_tuning_interval
from slowed.slow_tuning.distributed import refuse_fsdp1
from slowed.slow_tuning.full import (
    REFERENCE_FILENAME,
    load_reference,
    project_full_,
    save_reference,
    snapshot_weights,
)
from slowed.slow_tuning.lora import (
    check_lora_projectable,
    project_lora_,
    refuse_nonzero_initial_adapter,
    resolve_adapter,
)
from slowed.slow_tuning.projection import NonFiniteDeltaError, ProjectionResult, Scope, checked_tau_and_scope

logger = logging.getLogger("slowed.slow_tuning")

LOG_KEY_BEFORE = "slowed/delta_norm_before"
LOG_KEY_AFTER = "slowed/delta_norm_after"


def _refuse_weight_copying_optimizer(optimizer: object) -> None:
    """Refuse optimizers known to keep their own weight copies (they would undo every projection)."""
    while optimizer is not None:
        if "schedulefree" in type(optimizer).__name__.lower():
            raise ValueError(
                f"Slow Tuning cannot be combined with the schedule-free optimizer {type(optimizer).__name__}: it "
                "keeps its own copies of the weights (the z and x sequences) and its next step would undo the "
                "projection. Use a standard optimizer (e.g. optim='adamw_torch')."
            )
        optimizer = getattr(optimizer, "optimizer", None)


def last_checkpoint(output_dir: str) -> str:
    """The newest ``checkpoint-*`` folder under `output_dir`, or "none saved"."""
    found = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    return found or f"none saved under {output_dir}"


class SlowTuningCallback(TrainerCallback):
    """Project ΔW back into the τ-ball during `transformers.Trainer` / `trl.SFTTrainer` training.

    Args:
        tau: radius τ > 0 of the Frobenius ball around W0.
        scope: "global" (one norm over all adapted modules) or "module" (each capped on its own).
        interval: "epoch" (at the step that completes each epoch), "step" (every optimizer step) or an int N
            (every N optimizer steps). With every interval the step where training stops is checked too:
            ``max_steps`` reached (also mid-epoch) or ``control.should_training_stop`` set (in `on_step_end`,
            or in `on_evaluate` by early stopping), so the trained model and its final checkpoint end within τ.
        reference: W0 for full fine-tuning (name -> tensor); None snapshots the trainable parameters at
            `on_train_begin`. Ignored with LoRA, whose W0 is the frozen base.
        adapter_name: the peft adapter to constrain; None (default) takes the model's one active adapter and
            refuses several active at once.

    The mode comes from the model: peft tuner layers present → LoRA, else full fine-tuning. With LoRA, a fresh
    run (global_step 0) whose adapter does not start at s·B·A = 0 is refused (see `refuse_nonzero_initial_adapter`).
    The checks run before the Trainer saves a checkpoint, so a checkpoint saved at a check holds projected
    weights. With interval "epoch" (or N) a checkpoint saved between checks while training continues holds the
    weights as trained so far. Early stopping sets ``should_training_stop`` in its own `on_evaluate`: this
    callback must come after it in the callback list to see the flag (`SLowEDTrainer` adds it last; with a plain
    Trainer pass it after `EarlyStoppingCallback`).

    A NaN or infinite ‖ΔW‖ raises `NonFiniteDeltaError` naming the optimizer step, the modules and the newest
    checkpoint under ``output_dir``. Under DDP every rank projects its own replica identically; under FSDP2 the
    norm is that of the full ΔW (see `slowed.slow_tuning.distributed`); FSDP1 and schedule-free optimizers are refused.

    Resuming full fine-tuning: a fresh run (global_step 0) writes the full W0 snapshot to
    ``<output_dir>/slow_tuning_reference.safetensors`` (atomically, from each node's local process zero, so
    every node of a multi-node run without a shared filesystem has it); a resumed run reloads it instead of
    re-snapshotting the resumed weights, and raises FileNotFoundError when it is missing.

    After every check `last_logs` holds {"slowed/delta_norm_before", "slowed/delta_norm_after"} (global
    norms, both measured) for the trainer's logs and `history` gains (global_step, ProjectionResult).
    """

    def __init__(
        self,
        tau: float,
        scope: Scope = "global",
        interval: Literal["epoch", "step"] | int = "epoch",
        reference: dict[str, torch.Tensor] | None = None,
        adapter_name: str | None = None,
    ) -> None:
        self.tau, self.scope = checked_tau_and_scope(tau, scope)
        self.interval = parse_slow_tuning_interval(interval)
        self.reference = reference
        self.adapter_name = adapter_name
        self.uses_lora: bool | None = None
        self.last_logs: dict[str, float] = {}
        self.history: list[tuple[int, ProjectionResult]] = []

    @property
    def every_n_steps(self) -> int | None:
        """N for step intervals, None for "epoch"."""
        if self.interval == "epoch":
            return None
        return 1 if self.interval == "step" else int(self.interval)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise ValueError("SlowTuningCallback needs the model; the Trainer passes it to callbacks")
        refuse_fsdp1(model)
        _refuse_weight_copying_optimizer(optimizer)
        self.uses_lora = any(isinstance(m, BaseTunerLayer) for m in model.modules())
        if self.uses_lora:
            self.adapter_name = resolve_adapter(model, self.adapter_name)
            check_lora_projectable(model, self.adapter_name)
            if state.global_step == 0:
                refuse_nonzero_initial_adapter(model, self.adapter_name)
        elif self.reference is None:
            self.reference = self._full_reference(model, args, state)

    def _full_reference(self, model: nn.Module, args, state) -> dict[str, torch.Tensor]:
        path = os.path.join(args.output_dir, REFERENCE_FILENAME)
        if state.global_step > 0:
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"Slow Tuning resumes full fine-tuning at step {state.global_step} but the W0 snapshot "
                    f"{path} is missing; pass reference=... (the initial weights) to SlowTuningCallback"
                )
            return load_reference(model, path)
        reference = snapshot_weights(model)
        save_reference(reference, path, write=state.is_local_process_zero)
        return reference

    def on_step_end(self, args, state, control, model=None, **kwargs):
        n = self.every_n_steps
        if n is not None:
            due = state.global_step % n == 0
        else:
            # The step that completes an epoch: the Trainer may save a step checkpoint right after this
            # hook and before `on_epoch_end`, so the epoch-end projection happens here.
            due = state.epoch is not None and float(state.epoch).is_integer()
        stopping = state.global_step >= state.max_steps or control.should_training_stop
        if due or stopping:
            self._check_once(model, args, state)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        # Early stopping sets the flag here, after `on_step_end` and before the checkpoint of this step.
        if control.should_training_stop:
            self._check_once(model, args, state)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.interval == "epoch":
            self._check_once(model, args, state)

    def _check_once(self, model: nn.Module, args, state) -> None:
        """Check at this optimizer step unless it was checked already."""
        if self.history and self.history[-1][0] == state.global_step:
            return
        try:
            result = self._project(model)
        except NonFiniteDeltaError as error:
            raise NonFiniteDeltaError(
                f"Slow Tuning at optimizer step {state.global_step}: {error}. Training cannot continue from "
                f"these weights; the last checkpoint is {last_checkpoint(args.output_dir)} (resume from it, e.g. "
                "with a lower learning rate)",
                error.modules,
            ) from error
        self.last_logs = {LOG_KEY_BEFORE: result.norm_before, LOG_KEY_AFTER: result.norm_after}
        self.history.append((state.global_step, result))
        logger.info(
            "Slow Tuning at step %d: ||dW|| %.6g -> %.6g measured (tau %.6g, scope %s, %s)",
            state.global_step,
            result.norm_before,
            result.norm_after,
            self.tau,
            self.scope,
            "projected" if result.projected else "within tau",
        )

    def _project(self, model: nn.Module) -> ProjectionResult:
        if self.uses_lora:
            return project_lora_(model, self.tau, self.scope, self.adapter_name)
        return project_full_(model, self.reference, self.tau, self.scope)
