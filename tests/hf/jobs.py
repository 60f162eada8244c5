"""Run on a spawned gloo rank by test_diffusers.py: tiny exports sampled by our pipeline, their diffusers folders,
and the way back (import, a weights-only training checkpoint, its re-export)."""

from __future__ import annotations

from pathlib import Path

import torch
from megatron_moviegen.hf.diffusers_format import (
    export_diffusers,
    export_to_training_checkpoint,
    import_diffusers,
    paper_text_encoders,
    toy_text_encoders,
)
from megatron_moviegen.checkpoints.export import export_training_checkpoint, load_exported_dit, read_exported_config
from megatron_moviegen.hf.lora import lora_tensors, write_lora
from megatron_moviegen.models.dit_config import LoRAConfig
from megatron_moviegen.models.lora import attach_lora, merge_lora
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.inference import MovieGenPipeline, SamplingConfig
from megatron_moviegen.inference.components import tiny_tae
from megatron_moviegen.inference.pipeline import decode_latents
from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
from megatron_moviegen.models.dit_chunks import build_dit_chunks
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
from megatron_moviegen.recipes import load_config
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.text import TextEncoders
from tests.inference.jobs import PROMPT, SAMPLING, make_tiny_export, sample
from tests.text.tiny_models import tiny_config

# The tiny recipe's text widths are the tiny T5 / CLIP checkpoints' (tests/text/tiny_models.py); their lengths:
PAPER_LENGTHS = ("model.text_encoders.ul2.max_length=24", "model.text_encoders.metaclip.max_length=256",
                 "model.text_encoders.byt5.max_length=32")


def exports_job(rank: int, world_size: int, root: str, text_checkpoints: dict) -> dict:
    root = Path(root)
    make_tiny_export(root / "export")
    latents = sample(root / "export", [])
    destroy()
    lora_latents = adapted_and_merged(root / "export", root / "lora")
    destroy()
    model = read_exported_config(root / "export").model
    export_diffusers(root / "export", root / "hf", tiny_tae(), toy_text_encoders(model))

    make_tiny_export(root / "paper_export", overrides=PAPER_LENGTHS)
    _, chunks = load_exported_dit(root / "paper_export")
    encoders = TextEncoders(tiny_config(text_checkpoints))
    paper = MovieGenPipeline(chunks[0], tiny_tae(), encoders).sample_latents(
        [PROMPT], SamplingConfig(**SAMPLING, seed=5), progress=False)
    destroy()
    export_diffusers(root / "paper_export", root / "hf_paper", tiny_tae(), paper_text_encoders(encoders))

    import_diffusers(root / "hf", root / "imported")
    export_to_training_checkpoint(root / "imported", root / "imported_ckpt")
    fine_tune_start = loaded_for_a_new_stage(root / "imported_ckpt")
    export_training_checkpoint(root / "imported_ckpt", root / "reexported")
    make_tiny_export(root / "edit_export", recipe="edit_tiny")
    destroy()
    return {"latents": latents, "pixels": decode_latents(tiny_tae(), latents, SAMPLING["num_frames"]),
            "paper_latents": paper, "fine_tune_start": fine_tune_start, "lora_latents": lora_latents}


def adapted_and_merged(export: Path, lora_folder: Path):
    """Rank-4 adapters with random B on every linear of the export's DiT, written as a diffusers LoRA file to
    `lora_folder`; returns what `generate`'s pipeline samples from the model with them merged (SAMPLING, seed 5)."""
    cfg, chunks = load_exported_dit(export)
    attach_lora(chunks[0].layers, LoRAConfig(rank=4, alpha=8.0))
    generator = torch.Generator().manual_seed(3)
    for name, param in chunks[0].named_parameters():
        if name.endswith("_lora.b"):
            param.data = torch.randn(param.shape, generator=generator) * 0.05
    write_lora(lora_tensors(chunks[0].layers, cfg.model.num_attention_heads), lora_folder)
    merge_lora(chunks[0].layers)
    pipeline = MovieGenPipeline(chunks[0], tiny_tae(), TinyTextEncoders.for_model(cfg.model))
    return pipeline.sample_latents([PROMPT], SamplingConfig(**SAMPLING, seed=5), progress=False)


def loaded_for_a_new_stage(checkpoint: Path) -> dict:
    """The tiny recipe's DiT after `train.load_from=checkpoint`'s load: {name: whole tensor}."""
    cfg = load_config("tiny", ["parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false"])
    runtime = Runtime.resolve()
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    load_weights_for_new_stage(str(checkpoint), chunks, resolution=cfg.data.buckets.resolution)
    weights = {name: param.detach().clone() for name, param in chunks[0].named_parameters()}
    destroy()
    return weights
