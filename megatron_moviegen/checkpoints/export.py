"""The exported DiT: one folder that loads under any TP/CP/PP layout, and the conversion of a training checkpoint
(Megatron dist checkpoint, any TP/PP layout) into it.

    folder/config.yaml                          a MovieGenConfig (`to_yaml`), parallel section at defaults
    folder/model-00001-of-00012.safetensors     whole tensors keyed by global names (`layers.<i>.` over all
    ...                                         stages), bf16 unless asked otherwise, each file <= 5 GB
    folder/model.safetensors.index.json         {"metadata": {"total_size": bytes}, "weight_map": {name: file}}
                                                (the Hugging Face convention), written last

    export_dit(chunks, "runs/export")                                  # every rank calls it
    cfg, chunks = load_exported_dit("runs/export", ["parallel.tensor_model_parallel_size=2"])

Exporting streams: tensors are gathered over TP one at a time and written by the first rank of each pipeline
stage, so no rank holds more than one file's worth. Loading reads only this rank's TP slice of each tensor
(`safe_open(...).get_slice`). Folders from before the index (one `model.safetensors`) still load.
Training checkpoints (Megatron dist-checkpointing) are converted into this format; generation reads only it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_moviegen.config import to_yaml
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.kinds import kind_of
from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.config.schema import ConfigError, apply_overrides, build, read_recipe
from megatron_moviegen.models.dit import MovieGenDiT
from megatron_moviegen.models.dit_config import LoRAConfig
from megatron_moviegen.models.lora import merge_lora
from megatron_moviegen.models.dit_chunks import build_dit_chunks
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
from megatron_moviegen.checkpoints.distributed import (
    CheckpointError,
    ema_file,
    keys_of_every_stage,
    load_checkpoint,
    natural_order,
    read_saved_config,
    resolve_checkpoint,
)
from megatron_moviegen.checkpoints.tp_shards import (
    ShapeMismatch,
    full_shape,
    global_name,
    shard_index,
    swiglu_rows,
    tp_partition_dim,
    unshard_tensor,
)
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.utils.io import (DamagedFileError, atomic_output, parse_byte_size, read_json_file, reading,  # noqa: F401
                                      replacing_folder, staging_folder, start_staging, swap_in_folder)  # parse_byte_size re-exported

CONFIG_NAME = "config.yaml"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"  # exports written before the index; still read
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
def check_export_folder(folder: str | Path) -> Path:
    """The folder, or FileNotFoundError naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} does not exist; expected an export folder "
                                f"with {CONFIG_NAME} and {INDEX_NAME} (written by export_dit)")
    missing = [name for name in (CONFIG_NAME, INDEX_NAME) if not (folder / name).is_file()]
    if INDEX_NAME in missing and (folder / SINGLE_FILE_NAME).is_file():
        missing.remove(INDEX_NAME)  # a single-file export
    if missing:
        raise FileNotFoundError(f"checkpoint folder {str(folder)!r} has no {' and no '.join(missing)}; "
                                f"an export folder holds {CONFIG_NAME} and {INDEX_NAME} with its shards, or "
                                f"a single {SINGLE_FILE_NAME} (written by export_dit)")
    return folder


def read_weight_map(folder: str | Path) -> dict[str, str]:
    """{tensor name: file in `folder`} from the index, or from a single-file export's header."""
    folder = check_export_folder(folder)
    if (folder / INDEX_NAME).is_file():
        return read_json_file(folder / INDEX_NAME, "export index (model.safetensors.index.json)")["weight_map"]
    with reading(folder / SINGLE_FILE_NAME, "safetensors file"), \
            safe_open(str(folder / SINGLE_FILE_NAME), framework="pt") as handle:
        return {name: SINGLE_FILE_NAME for name in handle.keys()}


def read_export_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every whole tensor of an export, as stored (for inspection and tests; loading reads TP slices)."""
    tensors = {}
    for name, file in read_weight_map(folder).items():
        with reading(Path(folder) / file, "safetensors file"), safe_open(str(Path(folder) / file), framework="pt") as handle:
            tensors[name] = handle.get_tensor(name)
    return tensors


def read_exported_config(folder: str | Path, overrides: list[str] | None = None) -> MovieGenConfig:
    """config.yaml of an export folder with `a.b=value` overrides. The parallel section starts at its defaults
    (one process): the layout to load under is the caller's choice, whatever layout the model was trained with."""
    path = check_export_folder(folder) / CONFIG_NAME
    data = read_recipe(path, Path(folder))
    # An export writes every section of its config (_finish_export): a section missing is a file cut short, which
    # YAML alone would read as a smaller config filled with defaults. `kind` is not a section: exports written
    # before kinds have none (kinds.kind_of infers it from data).
    missing = [f.name for f in dataclasses.fields(MovieGenConfig) if f.name not in data and f.name != "kind"]
    if missing:
        raise DamagedFileError(f"{path}: cut short or not an export's config: sections {missing} are missing (an "
                               "export writes all of them); export the checkpoint again")
    data["parallel"] = {}
    apply_overrides(data, list(overrides or []))
    return build(MovieGenConfig, data)


def load_exported_dit(folder: str | Path, cfg_overrides: list[str] | None = None,
                      runtime: Runtime | None = None) -> tuple[MovieGenConfig, list[MovieGenDiT]]:
    """Build this rank's DiT chunks for the layout in `cfg_overrides` (parallel.* fields; torch.distributed and
    Megatron's groups are set up here) on the runtime's device and dtype (default: this machine's, fp32), and fill
    them from the export folder. Chunks come back in eval mode."""
    cfg = read_exported_config(folder, cfg_overrides)
    runtime = runtime or Runtime.resolve("fp32", cfg.model.transformer_impl, distributed_optimizer=False)
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    weight_map = read_weight_map(folder)
    used: set[str] = set()
    for chunk in chunks:
        used |= load_export_slices(chunk, folder, weight_map, chunk.layer_offset)
        chunk.eval()
    refuse_unused(folder, weight_map, used)
    return cfg, chunks


@torch.no_grad()
def load_export_slices(model: torch.nn.Module, folder: str | Path, weight_map: dict[str, str],
                       layer_offset: int = 0) -> set[str]:
    """Copy this rank's TP shard of every parameter of `model` from the export, reading only that slice of each
    tensor from disk (cast to the parameter's dtype and device); returns the tensor names used. A tensor of
    another shape than the model's is a ShapeMismatch naming it and both shapes."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_world = parallel_state.get_tensor_model_parallel_world_size()
    files, used = {}, set()
    for name, param in model.named_parameters():
        key = global_name(name, layer_offset)
        needed = full_shape(name, param, tp_world)
        if key not in weight_map:
            raise ShapeMismatch(f"export {str(folder)!r} has no tensor {key!r}; this model needs it with shape "
                                f"{needed}")
        if weight_map[key] not in files:
            with reading(Path(folder) / weight_map[key], "safetensors file"):  # the header is checked on opening
                files[weight_map[key]] = safe_open(str(Path(folder) / weight_map[key]), framework="pt")
        stored = files[weight_map[key]].get_slice(key)
        if tuple(stored.get_shape()) != needed:
            raise ShapeMismatch(f"tensor {key!r} is {tuple(stored.get_shape())} in the export but {needed} in this "
                                "model")
        pieces = [stored[index] for index in shard_index(key, tuple(stored.get_shape()), tp_partition_dim(param),
                                                         tp_rank, tp_world, swiglu=swiglu_rows(model))]
        shard = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        param.copy_(shard)
        used.add(key)
    return used


def refuse_unused(folder: str | Path, weight_map: dict[str, str], used: set[str]) -> None:
    """An export tensor no pipeline stage loaded belongs to a bigger model (more layers, another module): refuse
    rather than drop it. Every rank must call it."""
    unused = sorted(set(weight_map).difference(*keys_of_every_stage(used)), key=natural_order)
    if unused:
        raise ShapeMismatch(f"{Path(folder) / weight_map[unused[0]]}: tensor {unused[0]!r} is not in the model of "
                            f"{CONFIG_NAME} plus overrides ({len(unused)} tensors would be dropped); the weights are "
                            "another model's or an override shrank the model")


def _tensors_to_write(model_chunks: list[MovieGenDiT]) -> list[tuple[str, torch.Tensor, int | None, int]]:
    """(global name, local tensor, TP partition dim, whole numel) of every tensor this pipeline stage exports.
    Later stages skip their replicas of the conditioning modules (`shared`): the first stage writes those."""
    tp_world = parallel_state.get_tensor_model_parallel_world_size()
    out = []
    for chunk in model_chunks:
        for name, param in chunk.named_parameters():
            if getattr(param, "shared", False):
                continue
            split = tp_partition_dim(param)
            out.append((global_name(name, chunk.layer_offset), param, split,
                        param.numel() * (tp_world if split is not None else 1)))
    return out


def plan_shards(sizes: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Consecutive tensors grouped into files of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    shards, current, used = [], [], 0
    for name, nbytes in sizes:
        if current and used + nbytes > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += nbytes
    return shards + ([current] if current else [])


def _gather_whole(name: str, local: torch.Tensor, split: int | None, swiglu: bool) -> torch.Tensor | None:
    """The whole tensor on TP rank 0 (None on the other TP ranks, which only send)."""
    world = parallel_state.get_tensor_model_parallel_world_size()
    if split is None or world == 1:
        return local
    group = parallel_state.get_tensor_model_parallel_group()
    first = parallel_state.get_tensor_model_parallel_rank() == 0
    shards = [torch.empty_like(local) for _ in range(world)] if first else None
    dist.gather(local.contiguous(), shards, dst=dist.get_global_rank(group, 0), group=group)
    return unshard_tensor(name, shards, split, swiglu=swiglu) if first else None


@torch.no_grad()
def export_dit(model_chunks: list[MovieGenDiT], folder: str | Path, name: str = "export",
               dtype: torch.dtype = torch.bfloat16, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
               data: Optional[DataConfig] = None, kind: Optional[str] = None) -> None:
    """Write the export folder from this rank's chunks (any TP/CP/PP layout) with tensors in `dtype`. Every rank
    must call it. The caller passes its recipe's `data` and `kind` (default: the one `data` implies): config.yaml
    records the kind and keeps
    data.buckets (the trained resolution), the section that marks the kind (data.upsample, data.edit: the names of
    an editing model's task-table rows, data.reference: a personalized model's vision tower, data.audio: an audio
    model's rates and video-feature tower).
    The first rank of each pipeline stage (TP, CP, DP rank 0) writes that stage's files; global rank 0 writes
    config.yaml and, last, the index, all into `staging_folder(folder)`, which rank 0 then swaps in
    (`swap_in_folder`): an export killed midway leaves an earlier export in `folder` whole."""
    final = Path(folder)
    if dist.get_rank() == 0:
        start_staging(final)
    dist.barrier()
    folder = staging_folder(final)
    in_writer_group = parallel_state.get_context_parallel_rank() == 0 and parallel_state.get_data_parallel_rank() == 0
    writes = in_writer_group and parallel_state.get_tensor_model_parallel_rank() == 0
    tensors = _tensors_to_write(model_chunks)
    shards = plan_shards([(key, numel * dtype.itemsize) for key, _, _, numel in tensors], max_shard_bytes)
    plans = [None] * dist.get_world_size()
    stage_bytes = sum(numel for *_, numel in tensors) * dtype.itemsize
    mine = (parallel_state.get_pipeline_model_parallel_rank(), shards, stage_bytes) if writes else None
    dist.all_gather_object(plans, mine)
    stages = sorted(plan for plan in plans if plan is not None)  # one per pipeline stage, in stage order
    all_shards = [keys for _, stage, _ in stages for keys in stage]
    first = sum(len(stage) for _, stage, _ in stages[: parallel_state.get_pipeline_model_parallel_rank()])
    files = [f"model-{i + 1:05d}-of-{len(all_shards):05d}.safetensors" for i in range(len(all_shards))]
    if in_writer_group:
        by_name = {key: (local, split) for key, local, split, _ in tensors}
        for number, keys in enumerate(shards, start=first):
            content = {}
            for key in keys:  # one tensor at a time: TP peers send their part, rank 0 of TP keeps it
                whole = _gather_whole(key, by_name[key][0].detach(), by_name[key][1],
                                      swiglu_rows(model_chunks[0]))
                if writes:
                    content[key] = whole.to(device="cpu", dtype=dtype).contiguous()
            if writes:
                with atomic_output(folder / files[number]) as tmp:
                    save_file(content, str(tmp), metadata={"format": "pt"})
    dist.barrier()
    if dist.get_rank() == 0:
        weight_map = {key: files[i] for i, keys in enumerate(all_shards) for key in keys}
        # The layout is not part of an export; an editing model's task names, a personalized model's vision
        # tower, an audio model's rates and feature tower, and the buckets it was trained on (their resolution scales the position tables of a later
        # stage started from it) are.
        kept = DataConfig() if data is None else DataConfig(buckets=data.buckets, image_fraction=data.image_fraction,
                                                            upsample=data.upsample, edit=data.edit,
                                                            reference=data.reference, audio=data.audio)
        cfg = MovieGenConfig(name=name, kind=kind, model=model_chunks[0].dit_config, data=kept)
        cfg.kind = kind_of(cfg).name  # recorded even when the caller gave none: the kind its data implies
        _finish_export(folder, cfg, weight_map, sum(nbytes for *_, nbytes in stages))
        swap_in_folder(final)
    dist.barrier()


def _finish_export(folder: Path, cfg: MovieGenConfig, weight_map: dict[str, str], total_size: int) -> None:
    """config.yaml, then the index (written last: it makes the folder an export)."""
    with atomic_output(folder / CONFIG_NAME) as tmp:
        tmp.write_text(to_yaml(cfg))
    with atomic_output(folder / INDEX_NAME) as tmp:
        tmp.write_text(json.dumps({"metadata": {"total_size": total_size},
                                   "weight_map": dict(sorted(weight_map.items()))}, indent=2))


def write_export_tensors(folder: str | Path, cfg: MovieGenConfig, tensors: dict[str, torch.Tensor],
                         max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """One process: whole tensors (global names) -> an export folder in the format `export_dit` writes, written
    beside it and swapped in (`replacing_folder`): killed midway, an earlier export in `folder` stays whole."""
    shards = plan_shards([(k, t.numel() * t.element_size()) for k, t in tensors.items()], max_shard_bytes)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    with replacing_folder(folder) as staging:
        for file, keys in zip(files, shards):
            with atomic_output(staging / file) as tmp:
                save_file({k: tensors[k].contiguous() for k in keys}, str(tmp), metadata={"format": "pt"})
        weight_map = {key: file for file, keys in zip(files, shards) for key in keys}
        _finish_export(staging, cfg, weight_map, sum(t.numel() * t.element_size() for t in tensors.values()))
    return Path(folder)


def export_training_checkpoint(checkpoint: str | Path, out: str | Path, layout_overrides: list[str] | None = None,
                               dtype: torch.dtype = torch.bfloat16,
                               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, ema: bool = False) -> Path:
    """Load `checkpoint` under the current process group (TP=PP=1 unless overridden) and write `out`; with `ema`,
    the EMA of the weights saved with it (train.ema_decay) instead of the trained weights (`load_ema_weights`).

    Each rank builds its chunks of the layout in float32, so at TP=PP=1 one process holds the whole model
    (30B: 117 GB); run it under the training layout (e.g. 8 ranks with parallel.tensor_model_parallel_size=4
    parallel.pipeline_model_parallel_size=2) and each rank holds 1/(TP x PP) of it. A LoRA run's checkpoint (its
    adapters) is merged into its base model (the run's train.load_from) and exported as a plain model."""
    step_dir = resolve_checkpoint(checkpoint)
    saved = read_saved_config(step_dir)
    saved_parallel, saved["parallel"] = saved.get("parallel") or {}, {}
    cfg = build(MovieGenConfig, apply_overrides(saved, list(layout_overrides or [])))
    runtime = Runtime.resolve("fp32", cfg.model.transformer_impl, distributed_optimizer=False)
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    if cfg.model.lora.enabled:  # the checkpoint holds the adapters; the base model is the run's train.load_from
        load_weights_for_new_stage(cfg.train.load_from, chunks, resolution=cfg.data.buckets.resolution)
    step = load_checkpoint(step_dir, chunks, restore_rng=False)
    if ema and cfg.model.lora.enabled:
        raise ConfigError("--ema: a LoRA run's EMA is not exported (its adapters are merged into the base model "
                          "after loading); export it without --ema")
    averaged = load_ema_weights(step_dir, chunks, saved_parallel) if ema else None
    if averaged is not None:
        with averaged.applied():
            export_dit(chunks, out, name=f"{cfg.name}@{step} EMA", dtype=dtype, max_shard_bytes=max_shard_bytes,
                       data=cfg.data, kind=kind_of(cfg).name)
        destroy()
        return Path(out)
    if cfg.model.lora.enabled:
        for chunk in chunks:
            merge_lora(chunk.layers)
            chunk.dit_config = replace(chunk.dit_config, lora=LoRAConfig())
    export_dit(chunks, out, name=f"{cfg.name}@{step}", dtype=dtype, max_shard_bytes=max_shard_bytes,
               data=cfg.data, kind=kind_of(cfg).name)
    destroy()
    return Path(out)


def ema_training_rank(tp_rank: int, pp_rank: int, tp: int, pp: int, saved_world_size: int) -> int:
    """The global rank that held TP rank `tp_rank` of pipeline stage `pp_rank` at data- and context-parallel rank 0 in
    a run of `saved_world_size` ranks: Megatron's default rank order "tp-cp-ep-dp-pp" (TP fastest, PP slowest)."""
    if saved_world_size % (tp * pp):
        raise CheckpointError(f"{saved_world_size} EMA files cannot come from a run at TP={tp} x PP={pp}")
    return tp_rank + tp * (saved_world_size // (tp * pp)) * pp_rank


def load_ema_weights(step_dir: Path, chunks: list[MovieGenDiT], saved_parallel: dict):
    """A `ModelEMA` of `chunks` holding the EMA saved with `step_dir`. EMA files hold each training rank's shards,
    so the export must run at the training's TP and PP sizes (any number of data- or context-parallel ranks saved
    it); this rank reads the file of the training rank with its TP and PP ranks."""
    from megatron_moviegen.training.ema import ModelEMA

    files = sorted((step_dir / "rank_state").glob("ema*.pt"))
    if not files:
        raise CheckpointError(f"{step_dir}: no EMA of the weights was saved with it (train.ema_decay was not set); "
                              "export without --ema")
    saved_tp = saved_parallel.get("tensor_model_parallel_size", 1)
    saved_pp = saved_parallel.get("pipeline_model_parallel_size", 1)
    tp, pp = (parallel_state.get_tensor_model_parallel_world_size(),
              parallel_state.get_pipeline_model_parallel_world_size())
    if (tp, pp) != (saved_tp, saved_pp):
        raise ConfigError(
            f"--ema: the EMA was saved per rank at TP={saved_tp}, PP={saved_pp}, and this export runs at TP={tp}, "
            f"PP={pp}; export on {saved_tp * saved_pp} process(es) with parallel.tensor_model_parallel_size={saved_tp}"
            f" parallel.pipeline_model_parallel_size={saved_pp}")
    rank = ema_training_rank(parallel_state.get_tensor_model_parallel_rank(),
                             parallel_state.get_pipeline_model_parallel_rank(), tp, pp, len(files))
    averaged = ModelEMA(chunks, decay=0.0)
    file = ema_file(step_dir, rank)
    with reading(file, "EMA of the weights (torch.save)"):
        averaged.load_state_dict(torch.load(file, weights_only=False))
    return averaged
