"""Text to image and video (t2v): the base video kind, with no data section of its own.

Its recipe checks are every video kind's (upsample, edit and personalize run them too, since their sections combine
on one DiT): the DiT reads what pre-encoding writes and holds every bucket and sample video of the run.
"""

from __future__ import annotations

import argparse

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.buckets import check_buckets_fit_model, check_buckets_split_evenly
from megatron_moviegen.kinds import Kind, register


def check_video_conditions(data, model) -> None:
    """What pre-encoding writes besides text (data.upsample / data.edit / data.reference) is what the DiT reads:
    condition channels of one latent each, one task-table row per data.edit task, and the reference image's tokens
    as model.extra_context.reference_image."""
    from megatron_moviegen.kinds.edit import check_task_table
    from megatron_moviegen.kinds.personalize import check_reference_tokens

    if model.infill:
        raise ConfigError("model.infill: true, but infilling is for data.audio models")
    channels = model.latent_channels if data.upsample is not None or data.edit is not None else 0
    if model.condition_channels != channels:
        made = "data.upsample" if data.upsample else "data.edit" if data.edit else "neither data.upsample nor data.edit"
        raise ConfigError(f"model.condition_channels: got {model.condition_channels}, but {made} gives the DiT "
                          f"{channels} condition channels")
    check_reference_tokens(data, model)
    check_task_table(data, model)


def check_video_recipe(cfg) -> None:
    """A video recipe: its conditions fit the DiT, which holds every bucket it trains and its sample videos, and its
    layout splits each bucket's tokens evenly."""
    check_video_conditions(cfg.data, cfg.model)
    check_buckets_fit_model(cfg.data.buckets, cfg.model)
    if cfg.train.samples is not None:
        cfg.train.samples.check_fits(cfg.model, cfg.parallel)
    check_buckets_split_evenly(cfg.data.buckets, cfg.model, cfg.parallel)


def evaluate_t2v(args: argparse.Namespace, recipe) -> dict:
    """The TAE's ceiling on the manifest's clips and, with --checkpoint, videos sampled from their captions scored
    against them."""
    from megatron_moviegen.evaluation import add_distribution_scores, evaluate, format_table, load_reference_clips
    from megatron_moviegen.inference.components import load_tae
    from megatron_moviegen.inference.pipeline import MovieGenPipeline
    from megatron_moviegen.kinds.evaluating import exported_model, finish
    from megatron_moviegen.utils.distribution import check_inputs

    clips = load_reference_clips(args.manifest, recipe.data.buckets, recipe.data.decoder)
    try:
        check_inputs(len(clips), args.fvd_model, args.clip_model)  # before any sampling
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"evaluate: error: {exc}") from None
    tae = load_tae(args.tae)
    if not args.checkpoint:
        report, videos = evaluate(clips, tae, None, args.steps, args.guidance_scale, args.seed)
    else:
        with exported_model(args) as (_, dit, text_encoders):
            report, videos = evaluate(clips, tae, MovieGenPipeline(dit, tae, text_encoders), args.steps,
                                      args.guidance_scale, args.seed)
    add_distribution_scores(report, videos, args.fvd_model, args.clip_model)
    return finish(args, report, videos, format_table)


KIND = register(Kind("t2v", "text to image and video", None, check_video_recipe, evaluate_t2v))
