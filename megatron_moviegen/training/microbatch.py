"""One flow-matching microbatch and Megatron's forward step over it: shared by training and validation."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_moviegen.conditioning import Conditioning, Infill
from megatron_moviegen.diffusion.flow_matching import (
    interpolate,
    sample_infill_known,
    sample_keep_mask,
    sample_timesteps,
    sequence_flow_matching_loss,
    velocity_target,
)
from megatron_moviegen.models.embeddings import patchify_latents
from megatron_moviegen.parallel.layout import SequenceLayout


def flow_matching_microbatch(latents: torch.Tensor, conditioning: Conditioning, generator: torch.Generator, cfg,
                             device: torch.device, text_drop_prob: float, condition_drop_prob: float = 0.0) -> dict:
    """Clean latents X_1 (b, 16, t, h, w) float32 -> noise X_0, flow times t, X_t and the target velocity tokens,
    drawn from `generator` in that order; the text of each sample is dropped with `text_drop_prob`, and its
    condition (channels zeroed, extra-context tokens such as a reference image masked) with `condition_drop_prob`
    (drawn next, only when > 0), for guidance. A model with infill then gets its known frames (drawn last) and
    `loss_weights` (s, b): the loss covers the frames to generate."""
    x0 = torch.randn(latents.shape, generator=generator)
    t = sample_timesteps(latents.shape[0], generator, kind=cfg.flow.timestep_sampling, mean=cfg.flow.logit_normal_mean,
                         std=cfg.flow.logit_normal_std)
    keep = sample_keep_mask(latents.shape[0], text_drop_prob, generator)
    conditioning = conditioning.keep_tokens(keep, list(cfg.model.text_encoders))
    extra = list(cfg.model.extra_context)
    if condition_drop_prob > 0 and (conditioning.channels is not None or extra):
        keep_condition = sample_keep_mask(latents.shape[0], condition_drop_prob, generator)
        if conditioning.channels is not None:
            conditioning = conditioning.keep_channels(keep_condition)
        if extra:
            conditioning = conditioning.keep_tokens(keep_condition, extra)
    weights = None
    if cfg.model.infill:
        b, _, frames, h, w = latents.shape
        known = sample_infill_known(b, frames, cfg.flow.infill_prob, tuple(cfg.flow.infill_span), generator)
        conditioning = replace(conditioning, infill=Infill(latents, known))
        unknown = (~known).float().view(b, 1, frames, 1, 1).expand(b, 1, frames, h, w)
        weights = patchify_latents(unknown, cfg.model.patch_size).mean(-1).to(device)  # (s, b)
    target = velocity_target(x0, latents, cfg.flow.sigma_min)
    return dict(
        noisy=interpolate(x0, latents, t, cfg.flow.sigma_min).to(device),
        target_tokens=patchify_latents(target, cfg.model.patch_size).to(device),
        loss_weights=weights,
        timesteps=t.to(device),
        conditioning=conditioning.to(device, torch.float32),
    )


def forward_step(layout: SequenceLayout, data_iterator, ddp_chunk):
    """Megatron's forward step: the loss closure knows only its target tokens and the sequence layout.
    (Megatron multiplies a 2-tuple loss by the CP size; DDP averages over DP x CP.)"""
    microbatch = next(data_iterator)
    output = ddp_chunk(microbatch["noisy"], microbatch["timesteps"], microbatch["conditioning"])

    def loss_func(output_tensor):
        loss, reported = sequence_flow_matching_loss(output_tensor, microbatch["target_tokens"], layout,
                                                     microbatch.get("loss_weights"))
        return loss, {"loss": reported}

    return output, loss_func


def run_microbatches(model: list, layout: SequenceLayout, microbatches: list[dict], seq_length: int,
                     micro_batch_size: int, forward_only: bool = False) -> list[dict]:
    """Megatron's forward_backward_func over one bucket's `microbatches` (any TP/SP/CP/PP layout): the
    {"loss"} of each microbatch on last-stage ranks, nothing on the others."""
    iterators = [iter(microbatches) for _ in model] if len(model) > 1 else iter(microbatches)
    return get_forward_backward_func()(
        forward_step_func=partial(forward_step, layout), data_iterator=iterators, model=model,
        num_microbatches=len(microbatches), seq_length=seq_length, micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
