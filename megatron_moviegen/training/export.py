"""Convert a training checkpoint (Megatron dist checkpoint, any TP/PP layout) into the export folder that
generation reads (inference/export.py): config.yaml + one model.safetensors of whole tensors."""

from __future__ import annotations

from pathlib import Path

from megatron_moviegen.config import MovieGenConfig
from megatron_moviegen.config.schema import apply_overrides, build
from megatron_moviegen.inference.export import export_dit
from megatron_moviegen.parallel.build import build_dit_chunks
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
from megatron_moviegen.training.checkpointing import load_checkpoint, read_saved_config, resolve_checkpoint


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
