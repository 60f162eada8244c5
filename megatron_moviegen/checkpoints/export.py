"""The exported DiT: one folder that loads under any TP/CP/PP layout, and the conversion of a training checkpoint
(Megatron dist checkpoint, any TP/PP layout) into it.

    folder/config.yaml         a MovieGenConfig (`megatron_moviegen.config.to_yaml`), parallel section at defaults
    folder/model.safetensors   whole tensors keyed by global parameter names (`layers.<i>.` over all stages)

    export_dit(chunks, "runs/export")                                  # every rank calls it; rank 0 writes
    cfg, chunks = load_exported_dit("runs/export", ["parallel.tensor_model_parallel_size=2"])

Training checkpoints (Megatron dist-checkpointing) are converted into this format; generation reads only it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors.torch import load_file, save_file

from megatron_moviegen.config import to_yaml
from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.config.schema import apply_overrides, build, read_recipe
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.parallel.build import build_dit_chunks
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
from megatron_moviegen.checkpoints.distributed import (
    keys_of_every_stage,
    load_checkpoint,
    natural_order,
    read_saved_config,
    resolve_checkpoint,
)
from megatron_moviegen.checkpoints.tp_shards import ShapeMismatch, gather_full_tensors, load_full_state_dict
from megatron_moviegen.utils.video_io import atomic_output

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


def check_export_folder(folder: str | Path) -> Path:
    """The folder, or FileNotFoundError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} does not exist; expected an export folder "
                                f"with {CONFIG_NAME} and {WEIGHTS_NAME} (written by export_dit)")
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} has no {' and no '.join(missing)}; "
                                f"an export folder holds {CONFIG_NAME} and {WEIGHTS_NAME} (written by export_dit)")
    return folder


def read_exported_config(folder: str | Path, overrides: list[str] | None = None) -> MovieGenConfig:
    """config.yaml of an export folder with `a.b=value` overrides. The parallel section starts at its defaults
    (one process): the layout to load under is the caller's choice, whatever layout the model was trained with."""
    data = read_recipe(check_export_folder(folder) / CONFIG_NAME, Path(folder))
    data["parallel"] = {}
    apply_overrides(data, list(overrides or []))
    return build(MovieGenConfig, data)


def load_exported_dit(folder: str | Path, cfg_overrides: list[str] | None = None,
                      params_dtype: torch.dtype = torch.float32) -> tuple[MovieGenConfig, list[MovieGenDiT]]:
    """Build this rank's DiT chunks for the layout in `cfg_overrides` (parallel.* fields; torch.distributed and
    Megatron's groups are set up here) and fill them from the export folder. Chunks come back in eval mode."""
    cfg = read_exported_config(folder, cfg_overrides)
    init_model_parallel(cfg.parallel)
    chunks = build_dit_chunks(cfg, params_dtype)
    full = load_file(str(Path(folder) / WEIGHTS_NAME))
    used: set[str] = set()
    for chunk in chunks:
        used |= load_full_state_dict(chunk, full, chunk.layer_offset)
        chunk.eval()
    refuse_unused(folder, full, used)
    return cfg, chunks


def refuse_unused(folder: str | Path, full: dict[str, torch.Tensor], used: set[str]) -> None:
    """An export tensor no pipeline stage loaded belongs to a bigger model (more layers, another module): refuse
    rather than drop it. Every rank must call it."""
    unused = sorted(set(full).difference(*keys_of_every_stage(used)), key=natural_order)
    if unused:
        raise ShapeMismatch(f"{Path(folder) / WEIGHTS_NAME}: tensor {unused[0]!r} {tuple(full[unused[0]].shape)} is "
                            f"not in the model of {CONFIG_NAME} plus overrides ({len(unused)} tensors would be "
                            "dropped); the weights are another model's or an override shrank the model")


def _gather_stages(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Union of every pipeline stage's whole tensors on the first stage (None elsewhere). Called only by the
    ranks of the pipeline group that holds global rank 0 (TP, CP and DP rank 0)."""
    world = parallel_state.get_pipeline_model_parallel_world_size()
    if world == 1:
        return tensors
    group = parallel_state.get_pipeline_model_parallel_group()
    first = dist.get_global_rank(group, 0)
    stages = [None] * world if dist.get_rank() == first else None
    dist.gather_object({k: v.cpu() for k, v in tensors.items()}, stages, dst=first, group=group)
    if stages is None:
        return None
    merged = {}
    for stage in stages:
        merged.update(stage)  # the conditioning modules are replicated on every stage: same values
    return merged


@torch.no_grad()
def export_dit(model_chunks: list[MovieGenDiT], folder: str | Path, name: str = "export") -> None:
    """Write the export folder from this rank's chunks (any TP/CP/PP layout). Every rank must call it; global
    rank 0 writes config.yaml and model.safetensors (each atomically)."""
    tensors = {}
    for chunk in model_chunks:  # the TP all-gather: every rank takes part
        tensors.update(gather_full_tensors(chunk, dict(chunk.named_parameters()), chunk.layer_offset))
    first_of_everything_but_pp = (parallel_state.get_tensor_model_parallel_rank() == 0
                                  and parallel_state.get_context_parallel_rank() == 0
                                  and parallel_state.get_data_parallel_rank() == 0)
    merged = _gather_stages(tensors) if first_of_everything_but_pp else None
    if dist.get_rank() == 0:
        folder = Path(folder)
        cfg = MovieGenConfig(name=name, model=model_chunks[0].dit_config)  # the layout is not part of an export
        with atomic_output(folder / CONFIG_NAME) as tmp:
            tmp.write_text(to_yaml(cfg))
        with atomic_output(folder / WEIGHTS_NAME) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in sorted(merged.items())}, str(tmp))
    dist.barrier()


def export_training_checkpoint(checkpoint: str | Path, out: str | Path, layout_overrides: list[str] | None = None
                               ) -> Path:
    """Load `checkpoint` under the current process group (TP=PP=1 unless overridden) and write `out`."""
    step_dir = resolve_checkpoint(checkpoint)
    saved = read_saved_config(step_dir)
    saved["parallel"] = {}
    cfg = build(MovieGenConfig, apply_overrides(saved, list(layout_overrides or [])))
    init_model_parallel(cfg.parallel)
    chunks = build_dit_chunks(cfg)
    step = load_checkpoint(step_dir, chunks, restore_rng=False)
    export_dit(chunks, out, name=f"{cfg.name}@{step}")
    destroy()
    return Path(out)
