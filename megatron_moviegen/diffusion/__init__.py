"""Flow matching (the training objective) and the ODE samplers (SPEC section 2)."""

from megatron_moviegen.diffusion.flow_matching import (
    FlowMatchingConfig,
    flow_matching_loss,
    interpolate,
    sample_keep_mask,
    sample_timesteps,
    sequence_flow_matching_loss,
    velocity_target,
)
from megatron_moviegen.diffusion.sampling import (
    classifier_free_guidance,
    source_and_text_guidance,
    euler_sample,
    linear_quadratic_schedule,
    linear_schedule,
    ode_sample,
)

__all__ = [
    "FlowMatchingConfig",
    "classifier_free_guidance",
    "source_and_text_guidance",
    "euler_sample",
    "flow_matching_loss",
    "interpolate",
    "linear_quadratic_schedule",
    "linear_schedule",
    "ode_sample",
    "sample_keep_mask",
    "sample_timesteps",
    "sequence_flow_matching_loss",
    "velocity_target",
]
