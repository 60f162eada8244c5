"""Personalized video (data.reference): each sample's reference image is encoded into the DiT's
`model.extra_context.reference_image` tokens.

`generate --reference-image` samples it (the image read by `read_reference`); the evaluation samples each subject with
its own reference, another's and none.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.config import REFERENCE_SOURCE
from megatron_moviegen.kinds import Kind, register
from megatron_moviegen.kinds.t2v import check_video_recipe

if TYPE_CHECKING:
    import torch

    from megatron_moviegen.data.config import ReferenceConfig
    from megatron_moviegen.recipes import MovieGenConfig


def check_reference_tokens(data, model) -> None:
    """data.reference and model.extra_context.reference_image are set together, with the same token count, and a
    trainable tower is part of the DiT."""
    wanted = model.extra_context.get(REFERENCE_SOURCE)
    if (data.reference is None) != (wanted is None):
        raise ConfigError(f"model.extra_context.{REFERENCE_SOURCE} and data.reference must be set together (the "
                          "reference image's tokens are written by pre-encoding and read by the DiT); got "
                          f"{'only the model entry' if wanted else 'only data.reference'}")
    if wanted is not None and wanted.max_length != data.reference.max_length:
        raise ConfigError(f"model.extra_context.{REFERENCE_SOURCE}.max_length: {wanted.max_length}, but "
                          f"data.reference.max_length is {data.reference.max_length}")
    if wanted is not None and data.reference.trainable != (wanted.encoder is not None):
        raise ConfigError(f"data.reference.trainable is {data.reference.trainable}, but model.extra_context."
                          f"{REFERENCE_SOURCE}.encoder is {'set' if wanted.encoder else 'not set'}: a trainable tower "
                          "is part of the DiT (its shape in the model config), a frozen one is not")


def evaluate_personalized(args: argparse.Namespace, recipe) -> dict:
    """The manifest's one caption sampled with each subject's reference image, another's and none, each scored
    against every subject's clips."""
    from megatron_moviegen.evaluation import evaluate_personalization, format_personalization_table, load_subject_clips
    from megatron_moviegen.inference.components import load_tae
    from megatron_moviegen.inference.pipeline import MovieGenPipeline
    from megatron_moviegen.kinds.evaluating import exported_model, finish
    from megatron_moviegen.models.vision_tower import ReferenceEncoder

    clips = load_subject_clips(args.manifest, recipe.data)
    tae = load_tae(args.tae)
    with exported_model(args, "a personalization recipe") as (_, dit, text_encoders):
        pipeline = MovieGenPipeline(dit, tae, text_encoders, reference_encoder=ReferenceEncoder(recipe.data.reference))
        report, videos = evaluate_personalization(clips, pipeline, recipe.data, args.steps, args.guidance_scale,
                                                  args.seed)
    return finish(args, report, videos, format_personalization_table)


def read_reference(args: argparse.Namespace, cfg: MovieGenConfig) -> tuple[torch.Tensor, ReferenceConfig]:
    """generate's --reference-image -> its frame (h, w, 3) uint8, through the export's crop as in pre-encoding, and
    the reference config (encoder from --reference-encoder when given), after checking the export is personalized."""
    from dataclasses import replace
    from pathlib import Path

    import av

    from megatron_moviegen.data.decode import DecodeError, PyAVDecoder
    from megatron_moviegen.data.preencode import load_crop, reference_frame
    from megatron_moviegen.models.vision_tower import resolve_encoder_source

    if cfg.data.reference is None or REFERENCE_SOURCE not in cfg.model.extra_context:
        raise ValueError(f"--reference-image: {args.checkpoint} is not a personalized export (its config has no "
                         f"data.reference / model.extra_context.{REFERENCE_SOURCE}); train one with the pt2v recipe")
    if not Path(args.reference_image).is_file():
        raise FileNotFoundError(f"--reference-image: {args.reference_image} is not a file")
    reference = cfg.data.reference
    if args.reference_encoder is not None:
        reference = replace(reference, encoder=args.reference_encoder)
    resolve_encoder_source(reference.encoder)  # a missing tower folder is named before the DiT loads
    try:
        frame = reference_frame(args.reference_image, args.reference_time, PyAVDecoder(), load_crop(reference.crop))
    except (DecodeError, ValueError, av.FFmpegError) as exc:
        raise ValueError(f"--reference-image: {args.reference_image} could not be decoded ({exc})") from None
    return frame, reference


KIND = register(Kind("personalize", "personalized video from a reference image", "reference", check_video_recipe,
                     evaluate_personalized, generate_input="--reference-image"))
