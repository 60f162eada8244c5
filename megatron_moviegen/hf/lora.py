"""A LoRA run's adapters (models/lora.py) as a diffusers LoRA file, in PEFT's names, for the base model's pipeline:

    pipe = DiffusionPipeline.from_pretrained("base_diffusers", trust_remote_code=True)
    pipe.load_lora_weights("adapters/pytorch_lora_weights.safetensors")        # peft installed

    transformer.blocks.<i>.attn1.to_q.lora_A.weight  (rank, in)
    transformer.blocks.<i>.attn1.to_q.lora_B.weight  (out, rank)

Each adapter sits on one of Megatron's fused linears; it becomes one adapter per diffusers linear, split as the
weight is (`to_diffusers`): the pieces share A and take their rows of B, so each piece's B A is exactly its rows of
the fused update. The adapter's scale (alpha / rank) is folded into B, so the file loads with PEFT's default alpha
(= rank, scale 1) and the update is the trained one.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.hf.diffusers_format import to_diffusers, transformer_config
from megatron_moviegen.models.dit_config import LINEARS, LoRAConfig
from megatron_moviegen.models.lora import ADAPTER_SUFFIX
from megatron_moviegen.utils.io import atomic_output

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the file name load_lora_weights looks for in a folder


def lora_tensors(layers, heads: int) -> dict[str, torch.Tensor]:
    """Whole (TP=1) DiT layers with adapters, in model order -> {transformer.blocks.<i>.<linear>.lora_A|B.weight}
    float32 (scale folded into B)."""
    out = {}
    for index, layer in enumerate(layers):
        for target in LINEARS:
            parent_name, linear_name = target.split(".")
            adapter = getattr(getattr(layer, parent_name), linear_name + ADAPTER_SUFFIX, None)
            if adapter is None:
                continue
            update = adapter.b.detach().float() * adapter.scale  # (out, rank)
            for name, rows in to_diffusers(f"layers.{index}.{target}.weight", update, heads).items():
                stem = "transformer." + name.removesuffix(".weight")
                out[f"{stem}.lora_A.weight"] = adapter.a.detach().float().clone()
                out[f"{stem}.lora_B.weight"] = rows.contiguous()
    return out


def write_lora(tensors: dict[str, torch.Tensor], folder: str | Path) -> Path:
    """`lora_tensors` -> folder/pytorch_lora_weights.safetensors (written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_output(folder / LORA_WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return folder / LORA_WEIGHTS


def export_lora(checkpoint: str | Path, folder: str | Path) -> Path:
    """A LoRA run's training checkpoint (its adapters only; one process, TP=PP=1) -> folder/pytorch_lora_weights
    .safetensors, for `load_lora_weights` on the pipeline of the run's base model (train.load_from, exported with
    tools/export_diffusers.py)."""
    from megatron_moviegen.checkpoints.distributed import load_checkpoint, read_saved_config, resolve_checkpoint
    from megatron_moviegen.config.schema import build
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import MovieGenConfig
    from megatron_moviegen.runtime import Runtime

    step_dir = resolve_checkpoint(checkpoint)
    saved = read_saved_config(step_dir)
    cfg = build(MovieGenConfig, {**saved, "parallel": {}})
    if not cfg.model.lora.enabled:
        raise ConfigError(f"{str(checkpoint)!r} is not a LoRA run's checkpoint (model.lora.rank is 0); export the "
                          "whole model without --lora")
    transformer_config(replace(cfg.model, lora=LoRAConfig()))  # the base must be a model the pipeline runs
    runtime = Runtime.resolve("fp32", cfg.model.transformer_impl, distributed_optimizer=False)
    init_model_parallel(cfg.parallel, runtime)
    try:
        chunks = build_dit_chunks(cfg, runtime)
        load_checkpoint(step_dir, chunks, restore_rng=False)
        tensors = lora_tensors([layer for chunk in chunks for layer in chunk.layers], cfg.model.num_attention_heads)
    finally:
        destroy()
    return write_lora(tensors, folder)
