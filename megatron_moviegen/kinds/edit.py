"""Video editing (data.edit): (source, instruction, target) triples; the DiT reads the source's latents as condition
channels and the task's row of its task table.

`generate --edit-video` samples it (VideoEditor); the evaluation samples each pair's edit from its source.
"""

from __future__ import annotations

import argparse

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.kinds import Kind, register
from megatron_moviegen.kinds.t2v import check_video_recipe


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


KIND = register(Kind("edit", "video editing by instruction", "edit", check_video_recipe, evaluate_editing,
                     generate_input="--edit-video"))
