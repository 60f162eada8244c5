"""The flow-matching objective of Movie Gen (SPEC section 2): the optimal-transport path from noise to data.

    X_t = t * X_1 + (1 - (1 - sigma_min) * t) * X_0,    X_0 ~ N(0, I) noise, X_1 clean latents, t in [0, 1]
    V_t = dX_t/dt = X_1 - (1 - sigma_min) * X_0          (the regression target of the DiT)

t = 0 is pure noise and t = 1 is data (up to sigma_min * X_0), as in the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import torch

from megatron_moviegen.config.schema import ConfigError

if TYPE_CHECKING:
    from megatron_moviegen.parallel.layout import SequenceLayout

SIGMA_MIN = 1e-5

TimestepSampling = Literal["logit_normal", "uniform"]


@dataclass
class FlowMatchingConfig:
    """The objective's knobs. Defaults are the paper's (text dropout for CFG is ours)."""

    sigma_min: float = SIGMA_MIN
    timestep_sampling: TimestepSampling = "logit_normal"
    logit_normal_mean: float = 0.0
    logit_normal_std: float = 1.0
    # Fraction of training samples whose text conditioning is dropped, so the model also learns the
    # unconditional velocity used by classifier-free guidance.
    text_drop_prob: float = 0.1
    # Fraction of samples whose condition is dropped (editing's source video: channels zeroed; personalization's
    # reference image: its extra-context tokens masked), drawn independently of the text drop, so the model also
    # learns v(no source, text) and v(no source, no text): guidance over the condition as well as the text
    # (InstructPix2Pix), and a PT2V model that still generates without a reference. 0 for the upsampler, whose
    # low-res video is always given.
    condition_drop_prob: float = 0.0
    # Masked infilling (model.infill, Movie Gen Audio): the share of samples given known frames, and the length of
    # the span left to generate, a uniform fraction of the sample's frames in [infill_span[0], infill_span[1]] (at
    # least one frame) at a uniform position; the rest is known (Voicebox-style spans, ours). The others generate
    # every frame. The loss covers the frames to generate.
    infill_prob: float = 0.5
    infill_span: tuple[float, float] = (0.7, 1.0)

    def validate(self) -> None:
        if not 0.0 <= self.sigma_min < 1.0:
            raise ConfigError(f"sigma_min: got {self.sigma_min}, must be in [0, 1)")
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(f"timestep_sampling: got {self.timestep_sampling!r}, expected logit_normal or uniform")
        if not self.logit_normal_std > 0.0:
            raise ConfigError(f"logit_normal_std: got {self.logit_normal_std}, must be > 0")
        if not 0.0 <= self.text_drop_prob <= 1.0:
            raise ConfigError(f"text_drop_prob: got {self.text_drop_prob}, must be in [0, 1]")
        if not 0.0 <= self.condition_drop_prob <= 1.0:
            raise ConfigError(f"condition_drop_prob: got {self.condition_drop_prob}, must be in [0, 1]")
        if not 0.0 <= self.infill_prob <= 1.0:
            raise ConfigError(f"infill_prob: got {self.infill_prob}, must be in [0, 1]")
        low, high = self.infill_span
        if not 0.0 < low <= high <= 1.0:
            raise ConfigError(f"infill_span: got {list(self.infill_span)}, need 0 < low <= high <= 1")


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View per-sample times (b,) as (b, 1, ..., 1) so they broadcast over a (b, c, t, h, w) tensor."""
    if t.shape != (like.shape[0],):
        raise ValueError(f"t: got shape {tuple(t.shape)}, expected ({like.shape[0]},) (one time per sample)")
    return t.view(-1, *([1] * (like.dim() - 1)))


def interpolate(x0_noise: torch.Tensor, x1_data: torch.Tensor, t: torch.Tensor,
                sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """X_t on the OT path. x0_noise, x1_data: (b, c, t, h, w) (any (b, ...) works); t: (b,) in [0, 1].

    The result has the promoted dtype of t and the latents (float32 t with bf16 latents gives float32).
    """
    if x0_noise.shape != x1_data.shape:
        raise ValueError(f"x0_noise shape {tuple(x0_noise.shape)} != x1_data shape {tuple(x1_data.shape)}")
    t = _per_sample(t, x1_data)
    return t * x1_data + (1.0 - (1.0 - sigma_min) * t) * x0_noise


def velocity_target(x0_noise: torch.Tensor, x1_data: torch.Tensor, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """V_t = X_1 - (1 - sigma_min) X_0, the time derivative of `interpolate` (constant along the path)."""
    if x0_noise.shape != x1_data.shape:
        raise ValueError(f"x0_noise shape {tuple(x0_noise.shape)} != x1_data shape {tuple(x1_data.shape)}")
    return x1_data - (1.0 - sigma_min) * x0_noise


def flow_matching_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                       weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scalar MSE between predicted and target velocities, computed in float32.

    pred, target: (b, c, t, h, w). mask: 1/True at valid (non-padded) latent positions, any shape that
    broadcasts to pred, e.g. (b, 1, t, h, w). Each sample's loss is the mean squared error over its valid
    elements (a sample with none contributes 0); the result is mean over samples of weights[i] * loss[i],
    with weights (b,) defaulting to 1.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    squared_error = (pred.float() - target.float()).square()
    if mask is None:
        per_sample = squared_error.flatten(1).mean(dim=1)  # (b,)
    else:
        mask = torch.broadcast_to(mask, pred.shape).float()
        valid = mask.flatten(1).sum(dim=1)  # (b,)
        per_sample = (squared_error * mask).flatten(1).sum(dim=1) / valid.clamp(min=1.0)
    if weights is not None:
        if weights.shape != per_sample.shape:
            raise ValueError(f"weights: got shape {tuple(weights.shape)}, expected ({pred.shape[0]},)")
        per_sample = per_sample * weights.float()
    return per_sample.mean()


def sample_timesteps(batch: int, generator: Optional[torch.Generator] = None, kind: TimestepSampling = "logit_normal",
                     mean: float = 0.0, std: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """Training times (batch,) float32 in (0, 1): sigmoid(N(mean, std^2)) for logit_normal, U[0, 1) for uniform."""
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    if kind == "uniform":
        return torch.rand(batch, generator=generator, device=device)
    raise ValueError(f"kind: got {kind!r}, expected 'logit_normal' or 'uniform'")


def sample_keep_mask(batch: int, drop_prob: float, generator: Optional[torch.Generator] = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Bool (batch,): False for the samples (each with probability drop_prob) trained without a condition (text,
    or editing's source), for classifier-free guidance."""
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob: got {drop_prob}, must be in [0, 1]")
    return torch.rand(batch, generator=generator, device=device) >= drop_prob


def sample_infill_known(batch: int, frames: int, prob: float, span: tuple[float, float],
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Bool (batch, frames), True = a known frame: with probability `prob` a sample knows every frame but one span
    to generate of round(u * frames) frames, u ~ U[span], at least one, at a uniform start; the others know none.
    Draws 3 numbers per sample from `generator`, in a fixed order."""
    draws = torch.rand(batch, 3, generator=generator)
    known = torch.zeros(batch, frames, dtype=torch.bool)
    for i, (given, length, start) in enumerate(draws.tolist()):
        if given >= prob:
            continue
        n = min(frames, max(1, round((span[0] + length * (span[1] - span[0])) * frames)))
        first = min(int(start * (frames - n + 1)), frames - n)
        known[i] = True
        known[i, first:first + n] = False
    return known


def sequence_flow_matching_loss(velocity_tokens: torch.Tensor, target_tokens: torch.Tensor,
                                layout: SequenceLayout, weights: Optional[torch.Tensor] = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE of this rank's predicted velocity tokens (s_local, b, e) against its tokens of the whole target
    (s, b, e), normalised by the whole target's element count (with `weights` (s, b), per-token weights of the
    whole sequence, such as the infill's frames to generate: the weighted squared error over their weighted count),
    so the partial losses of the ranks that share a sequence add up to the mean. Returns (this rank's partial loss
    for backward, the whole mean for reporting)."""
    local_target = layout.split(target_tokens)
    if velocity_tokens.shape != local_target.shape:
        raise ValueError(f"velocity tokens {tuple(velocity_tokens.shape)} do not match this rank's target tokens "
                         f"{tuple(local_target.shape)}")
    squared_error = (velocity_tokens.float() - local_target.float()).pow(2)
    if weights is None:
        loss = squared_error.sum() / target_tokens.numel()
    else:
        if weights.shape != target_tokens.shape[:2]:
            raise ValueError(f"weights: got shape {tuple(weights.shape)}, expected {tuple(target_tokens.shape[:2])}")
        total = weights.float().sum() * target_tokens.shape[-1]
        loss = (squared_error * layout.split(weights).float()[..., None]).sum() / total
    return loss, layout.sum_partials(loss)
