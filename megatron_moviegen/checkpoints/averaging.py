"""Model averaging (Movie Gen SFT averages the models of several finetuning runs): the elementwise mean of
export folders of one model config, written as one export folder.

    average_exports(["/exports/sft_a", "/exports/sft_b"], "/exports/sft_avg")

Training checkpoints are exported first (checkpoints/export.py); tools/average_checkpoints.py does both.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from megatron_moviegen.checkpoints.export import (
    check_export_folder,
    read_exported_config,
    read_weight_map,
    write_export_tensors,
)
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.recipes import MovieGenConfig


def check_same_model(folders: list[Path]) -> MovieGenConfig:
    """The first folder's config; ConfigError naming the first model field where another folder differs."""
    configs = [read_exported_config(f) for f in folders]
    reference = asdict(configs[0].model)
    for folder, cfg in zip(folders[1:], configs[1:]):
        other = asdict(cfg.model)
        for name in reference:
            if other[name] != reference[name]:
                raise ConfigError(f"model.{name}: {folders[0]} has {reference[name]!r} but {folder} has "
                                  f"{other[name]!r}; only models of one config can be averaged")
    return configs[0]


def average_exports(folders: list[str | Path], out: str | Path, weights: Optional[list[float]] = None) -> Path:
    """Write the export folder `out` (export_dit's format, each file atomic) with sum_i w_i * tensor_i for every tensor;
    `weights` default to 1/n each and must sum to 1. Every folder must hold the same tensor names and shapes."""
    folders = [check_export_folder(f) for f in folders]
    if len(folders) < 2:
        raise ValueError(f"averaging needs at least two export folders, got {len(folders)}")
    weights = [1.0 / len(folders)] * len(folders) if weights is None else list(weights)
    if len(weights) != len(folders) or abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
        raise ValueError(f"weights: got {weights} for {len(folders)} folders; need one each, >= 0, summing to 1")
    cfg = check_same_model(folders)
    maps = [read_weight_map(f) for f in folders]
    names = sorted(maps[0])
    for folder, weight_map in zip(folders[1:], maps[1:]):
        if sorted(weight_map) != names:
            extra, missing = sorted(set(weight_map) - set(names)), sorted(set(names) - set(weight_map))
            raise ValueError(f"{folder}: tensors differ from {folders[0]}: extra {extra[:4]}, missing {missing[:4]}")
    handles = {}

    def read(folder: Path, weight_map: dict[str, str], name: str) -> torch.Tensor:
        path = str(folder / weight_map[name])
        if path not in handles:
            handles[path] = safe_open(path, framework="pt")
        return handles[path].get_tensor(name)

    averaged = {}
    for name in names:  # one tensor at a time: peak memory is the output plus one tensor per folder
        tensors = [read(folder, weight_map, name) for folder, weight_map in zip(folders, maps)]
        for folder, tensor in zip(folders[1:], tensors[1:]):
            if tensor.shape != tensors[0].shape or tensor.dtype != tensors[0].dtype:
                raise ValueError(f"tensor {name}: {folders[0]} has {tuple(tensors[0].shape)} {tensors[0].dtype}, "
                                 f"{folder} has {tuple(tensor.shape)} {tensor.dtype}")
        total = sum(w * t.to(torch.float64) for w, t in zip(weights, tensors))
        averaged[name] = total.to(tensors[0].dtype).contiguous()
    cfg.name = f"average of {', '.join(str(f) for f in folders)}"
    return write_export_tensors(out, cfg, averaged)
