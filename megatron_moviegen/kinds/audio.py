"""Movie Gen Audio (data.audio): a file's audio latents conditioned on its caption and per-frame video features,
with infilling; data.buckets does not apply.

Sampled by `generate-audio` (`python -m megatron_moviegen.generate_audio`); evaluated against each file's true
soundtrack beside the audio autoencoder's ceiling.
"""

from __future__ import annotations

import argparse

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.buckets import check_audio_buckets
from megatron_moviegen.kinds import Kind, register


def check_no_video_conditions(model) -> None:
    """An audio model (data.audio) has no extra context source or task table: it reads text tokens, video features
    and its infill."""
    if model.extra_context or model.num_tasks:
        raise ConfigError(f"model.extra_context {sorted(model.extra_context)} / num_tasks {model.num_tasks}: an audio "
                          "model (data.audio) reads text tokens, video features and its infill only")


def check_audio_recipe(cfg) -> None:
    """The DiT reads the per-frame video features data.audio gives it and nothing of a video model's, the run samples
    no videos, and its audio buckets fit the model and the layout."""
    if cfg.model.condition_channels < 1:
        raise ConfigError(f"model.condition_channels: got {cfg.model.condition_channels}, but data.audio gives the "
                          "DiT per-frame video features (the width of data.audio.video_encoder)")
    check_no_video_conditions(cfg.model)
    if cfg.train.samples is not None:
        raise ConfigError("train.samples: sample videos while training are for video models, not data.audio")
    check_audio_buckets(cfg.data.audio, cfg.model, cfg.parallel)


def evaluate_audio_model(args: argparse.Namespace, recipe) -> dict:
    """Audio generated for each file's video and caption, scored against its true soundtrack (mel distance, SNR)
    beside the audio autoencoder's reconstruction."""
    from dataclasses import replace

    from megatron_moviegen.evaluation import evaluate_audio, format_audio_table, load_sound_clips
    from megatron_moviegen.inference.audio import AudioPipeline, AudioSamplingConfig
    from megatron_moviegen.kinds.evaluating import exported_model, finish
    from megatron_moviegen.models.audio_ae import AudioAutoencoder
    from megatron_moviegen.models.vision_tower import FrameFeatureEncoder

    clips = load_sound_clips(args.manifest, recipe.data.audio)
    autoencoder = AudioAutoencoder.from_pretrained(args.audio_ae).eval()
    settings = AudioSamplingConfig(steps=args.steps, solver=args.audio_solver, schedule=args.audio_schedule,
                                   guidance_scale=args.guidance_scale, seed=args.seed)
    with exported_model(args, "an audio recipe") as (cfg, dit, text_encoders):
        audio = replace(cfg.data.audio, video_encoder=recipe.data.audio.video_encoder)
        pipeline = AudioPipeline(dit, autoencoder, text_encoders, FrameFeatureEncoder(audio.video_encoder), audio)
        report, pictures = evaluate_audio(clips, pipeline, settings)
    return finish(args, report, pictures, format_audio_table, frames=1)


KIND = register(Kind("audio", "Movie Gen Audio: sound for a video and its caption", "audio", check_audio_recipe,
                     evaluate_audio_model, evaluate_with="--audio-ae", sampled_by="generate-audio"))
