"""Video editing (data.edit): (source, instruction, target) triples; the DiT reads the source's latents as condition
channels and the task's row of its task table.

`generate --edit-video` samples it (VideoEditor; its source is read by `read_edit_source`); the evaluation samples each
pair's edit from its source.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.kinds import Kind, register
from megatron_moviegen.kinds.t2v import check_video_recipe

if TYPE_CHECKING:
    import torch

    from megatron_moviegen.inference.pipeline import SamplingConfig
    from megatron_moviegen.recipes import MovieGenConfig


def check_task_table(data, model) -> None:
    """The DiT has one task-table row per data.edit task (none without data.edit)."""
    tasks = 0 if data.edit is None else len(data.edit.tasks)
    if model.num_tasks != tasks:
        raise ConfigError(f"model.num_tasks: got {model.num_tasks}, but data.edit.tasks lists {tasks} task(s)")


def evaluate_editing(args: argparse.Namespace, recipe) -> dict:
    """Each (source, instruction, target) pair of the manifest edited from its source and scored against its
    target, beside the TAE's reconstruction of the target."""
    from megatron_moviegen.evaluation import evaluate_edits, format_edit_table, load_edit_pairs
    from megatron_moviegen.inference.components import load_tae
    from megatron_moviegen.inference.editor import EditingConfig, VideoEditor
    from megatron_moviegen.kinds.evaluating import exported_model, finish

    pairs = load_edit_pairs(args.manifest, recipe.data)
    tae = load_tae(args.tae)
    settings = EditingConfig(steps=args.steps, guidance_scale=args.guidance_scale,
                             source_guidance_scale=args.source_guidance_scale, seed=args.seed)
    with exported_model(args, "an editing recipe") as (cfg, dit, text_encoders):
        report, videos = evaluate_edits(pairs, VideoEditor(dit, tae, text_encoders, cfg.data.edit), settings)
    return finish(args, report, videos, format_edit_table)


def read_edit_source(args: argparse.Namespace, settings: SamplingConfig, cfg: MovieGenConfig
                     ) -> tuple[torch.Tensor, SamplingConfig]:
    """generate's --edit-video -> its pixels (1, 3, t, h, w) in [-1, 1] and the SamplingConfig `settings` with its
    frames and size, after checking the export is an editing model and --task one of its tasks."""
    from dataclasses import replace
    from pathlib import Path

    import av

    from megatron_moviegen.data.decode import DecodeError, is_image
    from megatron_moviegen.kinds import kind_of
    from megatron_moviegen.upsample import read_video

    if kind_of(cfg).generate_input != "--edit-video" or cfg.model.condition_channels == 0:
        raise ValueError(f"--edit-video: {args.checkpoint} is not a video-editing export (its config has no "
                         "data.edit section / model.condition_channels); train one with the edit_video recipe")
    if args.task is not None and args.task not in cfg.data.edit.tasks:
        raise ValueError(f"--task: got {args.task!r}, the export knows {cfg.data.edit.tasks}")
    if not Path(args.edit_video).is_file():
        raise FileNotFoundError(f"--edit-video: {args.edit_video} is not a file")
    frames = 1 if is_image(args.edit_video) else settings.num_frames  # an image edits as a 1-frame video
    try:
        pixels = read_video(args.edit_video, 0.0, settings.fps, frames, args.height, args.width)
    except (DecodeError, av.FFmpegError) as exc:
        raise ValueError(f"--edit-video: {args.edit_video} could not be decoded ({exc})") from None
    frames, height, width = pixels.shape[2:]
    return pixels, replace(settings, num_frames=frames, height=height, width=width)


KIND = register(Kind("edit", "video editing by instruction", "edit", check_video_recipe, evaluate_editing,
                     generate_input="--edit-video"))
