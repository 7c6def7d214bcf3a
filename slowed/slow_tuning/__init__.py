"""Slow Tuning: keep the weights in a Frobenius ball of radius τ around the initial model.

The update is ΔW = W − W0; whenever ‖ΔW‖_F > τ it is scaled back onto the sphere of radius τ. Split the way
peft splits LoRA, one concept per module:

- `slowed.slow_tuning.lora`: LoRA (ΔW = s·B·A): factor discovery, refusals, Gram-trick norms, the projection, and
  what Slow Tuning cannot constrain (`unconstrained_parameters`, with the one verdict `check_lora_projectable`);
- `slowed.slow_tuning.full`: full fine-tuning: the W0 reference (snapshot, saved for resumption), norms, projection;
- `slowed.slow_tuning.projection`: measure, scale, re-measure until within τ·(1 + 1e-6), in any dtype;
- `slowed.slow_tuning.distributed`: reading and scaling parameters under FSDP2 and DeepSpeed ZeRO;
- `slowed.slow_tuning.callback`: `SlowTuningCallback`, which projects during training.

Plain torch + peft + a transformers callback; no TRL.
"""

from slowed.slow_tuning.callback import LOG_KEY_AFTER, LOG_KEY_BEFORE, SlowTuningCallback, last_checkpoint
from slowed.slow_tuning.full import (
    REFERENCE_FILENAME,
    full_delta_norms,
    load_reference,
    project_full_,
    save_reference,
    snapshot_weights,
)
from slowed.slow_tuning.lora import (
    INITIAL_DELTA_REL_TOL,
    ZERO_DELTA_INITS,
    active_adapter_name,
    check_lora_projectable,
    is_zero_delta_init,
    lora_delta_norms,
    nonzero_adapter_modules,
    project_lora_,
    refuse_nonzero_initial_adapter,
    unconstrained_parameters,
)
from slowed.slow_tuning.projection import (
    MAX_PROJECTION_PASSES,
    TAU_TOLERANCE,
    NonFiniteDeltaError,
    ProjectionResult,
    Scope,
    global_norm,
)

__all__ = [
    "INITIAL_DELTA_REL_TOL",
    "LOG_KEY_AFTER",
    "LOG_KEY_BEFORE",
    "MAX_PROJECTION_PASSES",
    "REFERENCE_FILENAME",
    "TAU_TOLERANCE",
    "ZERO_DELTA_INITS",
    "NonFiniteDeltaError",
    "ProjectionResult",
    "Scope",
    "SlowTuningCallback",
    "active_adapter_name",
    "check_lora_projectable",
    "full_delta_norms",
    "global_norm",
    "is_zero_delta_init",
    "last_checkpoint",
    "load_reference",
    "lora_delta_norms",
    "nonzero_adapter_modules",
    "project_full_",
    "project_lora_",
    "refuse_nonzero_initial_adapter",
    "save_reference",
    "snapshot_weights",
    "unconstrained_parameters",
]
