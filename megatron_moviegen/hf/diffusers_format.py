"""Our export folder (checkpoints/export.py) <-> a Hugging Face diffusers pipeline folder, both ways.

    out/model_index.json                    ["pipeline", "MovieGenVideoPipeline"] and its components (written last)
    out/pipeline.py                         names the pipeline class for DiffusionPipeline.from_pretrained
    out/transformer/config.json             MovieGenTransformer3DModel, and moviegen_config.yaml (the export's
    out/transformer/diffusion_pytorch_model-0000N-of-0000M.safetensors     whole config, for the way back)
    out/vae/                                MovieGenTAEModel (also a TAE folder: TAE.from_pretrained reads it)
    out/scheduler/scheduler_config.json     MovieGenFlowEulerScheduler
    out/flow_match_scheduler/               diffusers' FlowMatchEulerDiscreteScheduler, to swap solvers (the pipeline
                                            gives it the same linear-quadratic sigmas)
    out/text_encoder[_2|_3]/, tokenizer[_2|_3]/   one per DiT text encoder, in context order

Tensor names: the modules around the blocks keep their names; each block `layers.<i>.` becomes `blocks.<i>.` with
Megatron's fused linears split. Megatron's linear_qkv holds, per attention head, [q; k; v] rows (head_dim each;
query groups = heads), its cross-attention linear_kv [k; v] per head, and SwiGLU's linear_fc1 [gate; up].
The transformer is converted one file of tensors at a time, so a 30B export needs one shard's memory, not 120 GB.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_moviegen.checkpoints.distributed import natural_order
from megatron_moviegen.checkpoints.export import (
    CONFIG_NAME,
    DEFAULT_MAX_SHARD_BYTES,
    plan_shards,
    read_exported_config,
    read_weight_map,
    write_export_tensors,
)
from megatron_moviegen.checkpoints.tp_shards import ShapeMismatch
from megatron_moviegen.config.schema import ConfigError, build, read_recipe
from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.utils.io import atomic_output, atomic_write_text, replacing_folder

MODEL_INDEX = "model_index.json"
PIPELINE_MODULE = "pipeline"  # out/pipeline.py
FLOW_MATCH_SCHEDULER = "flow_match_scheduler"
# diffusers finds a pipeline class outside its own package only through a module file in the folder, which it runs
# only with trust_remote_code=True; this one imports the installed class.
PIPELINE_FILE = ('''"""Names the pipeline class for
`DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)`: MovieGenVideoPipeline from the installed
megatron_moviegen (pip install "megatron_moviegen[hf]")."""

from megatron_moviegen.hf.pipeline import MovieGenVideoPipeline  # noqa: F401
''')
WEIGHTS_PREFIX = "diffusion_pytorch_model"
MOVIEGEN_CONFIG = "moviegen_config.yaml"
TEXT_COMPONENTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))

# Block tensors that keep their shape: ours -> diffusers (inside `layers.<i>.` / `blocks.<i>.`).
_RENAMED = {
    "self_attn_norm.weight": "norm1.weight",
    "self_attention.q_layernorm.weight": "attn1.norm_q.weight",
    "self_attention.k_layernorm.weight": "attn1.norm_k.weight",
    "self_attention.linear_proj.weight": "attn1.to_out.weight",
    "cross_attn_norm.weight": "norm2.weight",
    "cross_attention.linear_q.weight": "attn2.to_q.weight",
    "cross_attention.linear_proj.weight": "attn2.to_out.weight",
    "mlp_norm.weight": "norm3.weight",
    "mlp.linear_fc2.weight": "ff.down.weight",
    "modulation_table": "scale_shift_table",
}
# Fused tensors: ours -> the diffusers tensors it splits into, in row order per head (attention) or whole (fc1).
_SPLIT = {
    "self_attention.linear_qkv.weight": ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"),
    "cross_attention.linear_kv.weight": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "mlp.linear_fc1.weight": ("ff.gate.weight", "ff.up.weight"),
}
_PER_HEAD = {"self_attention.linear_qkv.weight", "cross_attention.linear_kv.weight"}


def _block_part(name: str, prefix: str) -> Optional[tuple[str, str]]:
    """"layers.3.mlp.linear_fc2.weight" -> ("3", "mlp.linear_fc2.weight"); None outside the blocks."""
    if not name.startswith(prefix):
        return None
    index, _, rest = name[len(prefix):].partition(".")
    return index, rest


def split_fused(part: str, tensor: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """A fused block tensor -> its pieces (`_SPLIT[part]` order)."""
    pieces = len(_SPLIT[part])
    if part in _PER_HEAD:  # (heads * pieces * hn, d) -> per head [piece_0; piece_1; ...]
        per_head = tensor.unflatten(0, (heads, pieces, -1))  # (heads, pieces, hn, d)
        return [per_head[:, i].flatten(0, 1) for i in range(pieces)]
    return list(tensor.chunk(pieces, dim=0))


def fuse(part: str, tensors: list[torch.Tensor], heads: int) -> torch.Tensor:
    """The inverse of `split_fused`."""
    if part in _PER_HEAD:
        return torch.stack([t.unflatten(0, (heads, -1)) for t in tensors], dim=1).flatten(0, 2)
    return torch.cat(tensors, dim=0)


def to_diffusers(name: str, tensor: torch.Tensor, heads: int) -> dict[str, torch.Tensor]:
    """One tensor of our export -> the diffusers transformer's tensor(s) it becomes."""
    block = _block_part(name, "layers.")
    if block is None:
        return {name: tensor}
    index, part = block
    if part in _RENAMED:
        return {f"blocks.{index}.{_RENAMED[part]}": tensor}
    if part in _SPLIT:
        return {f"blocks.{index}.{new}": piece for new, piece in zip(_SPLIT[part], split_fused(part, tensor, heads))}
    raise ShapeMismatch(f"tensor {name!r} has no diffusers counterpart (a LoRA adapter or another model's "
                        "module?); export the merged, text-to-video model")


def from_diffusers(tensors: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """The diffusers transformer's tensors -> our export's (the inverse of `to_diffusers`)."""
    renamed = {new: ours for ours, new in _RENAMED.items()}
    split_of = {piece: ours for ours, pieces in _SPLIT.items() for piece in pieces}
    out, pending = {}, {}
    for name, tensor in tensors.items():
        block = _block_part(name, "blocks.")
        if block is None:
            out[name] = tensor
            continue
        index, part = block
        if part in renamed:
            out[f"layers.{index}.{renamed[part]}"] = tensor
        elif part in split_of:
            pending.setdefault((index, split_of[part]), {})[part] = tensor
        else:
            raise ShapeMismatch(f"diffusers tensor {name!r} is not part of a MovieGenTransformer3DModel")
    for (index, ours), parts in pending.items():
        missing = [p for p in _SPLIT[ours] if p not in parts]
        if missing:
            raise ShapeMismatch(f"block {index}: {ours!r} needs {list(_SPLIT[ours])}, missing {missing}")
        out[f"layers.{index}.{ours}"] = fuse(ours, [parts[p] for p in _SPLIT[ours]], heads)
    return dict(sorted(out.items(), key=lambda item: natural_order(item[0])))


# The model kinds the text-to-video pipeline refuses, by the field that marks each (first match names it).
_OTHER_KINDS = (("model.infill", "an audio model"), ("model.gated_mlp", "an audio model"),
                ("model.num_tasks", "a video-editing model"), ("model.extra_context", "a personalized (PT2V) model"),
                ("model.condition_channels", "a spatial upsampler"),
                ("model.lora.rank", "a LoRA run with unmerged adapters (export it with tools/export_checkpoint.py, "
                                    "or its adapters with --lora)"))


def transformer_config(model: DiTConfig) -> dict:
    """MovieGenTransformer3DModel's config for a text-to-video DiT; other models are refused by name."""
    extras = {"model.condition_channels": model.condition_channels, "model.num_tasks": model.num_tasks,
              "model.extra_context": sorted(model.extra_context), "model.lora.rank": model.lora.rank,
              "model.infill": model.infill, "model.gated_mlp": not model.gated_mlp}
    used = {name: (not value if name == "model.gated_mlp" else value) for name, value in extras.items() if value}
    if used:
        kind = next(kind for field, kind in _OTHER_KINDS if field in used)
        raise ConfigError(f"the diffusers pipeline is text-to-video; this is {kind} ({used}), which has no "
                          "diffusers pipeline: use its megatron_moviegen command on the export")
    return dict(num_layers=model.num_layers, hidden_size=model.hidden_size, ffn_hidden_size=model.ffn_hidden_size,
                num_attention_heads=model.num_attention_heads, latent_channels=model.latent_channels,
                patch_size=list(model.patch_size), max_frames=model.max_frames, max_height=model.max_height,
                max_width=model.max_width,
                text_encoders=[[name, s.width, s.max_length] for name, s in model.text_encoders.items()],
                trained_fps=list(model.trained_fps), timestep_embedding_dim=model.timestep_embedding_dim,
                qk_norm=model.qk_norm, norm_epsilon=model.norm_epsilon)


# ---- ours -> diffusers ---------------------------------------------------------------------------------------
_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _shapes(folder: Path, weight_map: dict[str, str]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """{name: (shape, dtype)} of an export's tensors, from the file headers alone."""
    out = {}
    for name, file in weight_map.items():
        with safe_open(str(folder / file), framework="pt") as handle:
            piece = handle.get_slice(name)
            out[name] = (tuple(piece.get_shape()), _DTYPES[piece.get_dtype()])
    return out


def _converted_sizes(names: list[str], shapes: dict, heads: int) -> Iterator[tuple[str, str, int]]:
    """(diffusers name, our source name, bytes) in file order, from shapes alone (meta tensors)."""
    for name in names:
        shape, _ = shapes[name]
        for new, tensor in to_diffusers(name, torch.empty(shape, device="meta"), heads).items():
            yield new, name, tensor.numel()


def write_transformer(export: Path, folder: Path, dtype: Optional[torch.dtype] = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """The export's DiT -> `folder` (config.json, moviegen_config.yaml, diffusers safetensors shards + index)."""
    from megatron_moviegen.hf.transformer import MovieGenTransformer3DModel

    cfg = read_exported_config(export)
    heads = cfg.model.num_attention_heads
    with torch.device("meta"):
        MovieGenTransformer3DModel(**transformer_config(cfg.model)).save_config(str(folder))
    atomic_write_text(folder / MOVIEGEN_CONFIG, (export / CONFIG_NAME).read_text())
    weight_map = read_weight_map(export)
    shapes = _shapes(export, weight_map)
    names = sorted(weight_map, key=natural_order)
    itemsize = lambda name: (dtype or shapes[name][1]).itemsize  # noqa: E731
    converted = list(_converted_sizes(names, shapes, heads))
    source_of = {new: name for new, name, _ in converted}
    shards = plan_shards([(new, numel * itemsize(name)) for new, name, numel in converted], max_shard_bytes)
    files = ([f"{WEIGHTS_PREFIX}.safetensors"] if len(shards) == 1 else
             [f"{WEIGHTS_PREFIX}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for file, keys in zip(files, shards):
        content = {}
        for name in dict.fromkeys(source_of[key] for key in keys):  # each source tensor read once per file
            with safe_open(str(export / weight_map[name]), framework="pt") as handle:
                tensor = handle.get_tensor(name)
            for new, piece in to_diffusers(name, tensor.to(dtype or tensor.dtype), heads).items():
                if new in keys:
                    content[new] = piece.contiguous()
        with atomic_output(folder / file) as tmp:
            save_file(content, str(tmp), metadata={"format": "pt"})
    if len(shards) > 1:
        total = sum(numel * itemsize(name) for _, name, numel in converted)
        index = {"metadata": {"total_size": total},
                 "weight_map": {key: file for file, keys in zip(files, shards) for key in keys}}
        atomic_write_text(folder / f"{WEIGHTS_PREFIX}.safetensors.index.json", json.dumps(index, indent=2))
    return folder


def _component(module) -> list:
    """model_index.json's [library, class] of a component (an instance or a class), as diffusers records it."""
    if module is None:
        return [None, None]
    cls = module if isinstance(module, type) else type(module)
    return ["transformers" if cls.__module__.startswith("transformers.") else cls.__module__, cls.__name__]


def export_diffusers(export: str | Path, out: str | Path, tae, text_encoders: dict[str, tuple[object, object]],
                     dtype: Optional[torch.dtype] = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Our export folder + a TAE + {source: (text encoder, tokenizer or None)} (in the DiT's text-encoder order) ->
    a diffusers pipeline folder `out`. Written into a staging folder and renamed, so `out` is whole or absent; `out` must
    not exist yet."""
    from megatron_moviegen.hf.autoencoder import MovieGenTAEModel
    from megatron_moviegen.hf.pipeline import MovieGenVideoPipeline
    from megatron_moviegen.hf.scheduler import MovieGenFlowEulerScheduler
    from megatron_moviegen.hf.transformer import MovieGenTransformer3DModel

    export, out = Path(export), Path(out)
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} exists; give a new folder (nothing was written)")
    cfg = read_exported_config(export)
    transformer_config(cfg.model)  # a model the text-to-video pipeline cannot run is refused before any writing
    names = list(cfg.model.text_encoders)
    if list(text_encoders) != names:
        raise ConfigError(f"text encoders: got {list(text_encoders)}, the DiT takes {names} (in that order)")
    with replacing_folder(out) as tmp:  # a killed export leaves no `out`, only a hidden staging folder
        transformer_dir = tmp / "transformer"
        transformer_dir.mkdir(parents=True)
        write_transformer(export, transformer_dir, dtype, max_shard_bytes)
        MovieGenTAEModel.from_tae(tae).save_pretrained(str(tmp / "vae"))
        scheduler = MovieGenFlowEulerScheduler()
        scheduler.save_config(str(tmp / "scheduler"))
        import diffusers

        diffusers.FlowMatchEulerDiscreteScheduler().save_config(str(tmp / FLOW_MATCH_SCHEDULER))
        index = {"_class_name": MovieGenVideoPipeline.__name__, "_diffusers_version": diffusers.__version__,
                 "transformer": _component(MovieGenTransformer3DModel), "vae": _component(MovieGenTAEModel),
                 "scheduler": _component(scheduler)}
        for (encoder_name, tokenizer_name), name in zip(TEXT_COMPONENTS, names):
            encoder, tokenizer = text_encoders[name]
            encoder.save_pretrained(str(tmp / encoder_name))
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / tokenizer_name))
            index[encoder_name], index[tokenizer_name] = _component(encoder), _component(tokenizer)
        for encoder_name, tokenizer_name in TEXT_COMPONENTS[len(names):]:
            index[encoder_name], index[tokenizer_name] = [None, None], [None, None]
        atomic_write_text(tmp / MODEL_INDEX, json.dumps(index, indent=2))
        name_pipeline_class(tmp)
    return out


def name_pipeline_class(folder: Path) -> None:
    """Make a saved MovieGenVideoPipeline folder loadable by `DiffusionPipeline.from_pretrained`: write
    pipeline.py and point model_index.json's `_class_name` at it (["pipeline", "MovieGenVideoPipeline"])."""
    folder = Path(folder)
    index = json.loads((folder / MODEL_INDEX).read_text())
    name = index["_class_name"]
    index["_class_name"] = [PIPELINE_MODULE, name[1] if isinstance(name, list) else name]
    atomic_write_text(folder / f"{PIPELINE_MODULE}.py", PIPELINE_FILE)
    atomic_write_text(folder / MODEL_INDEX, json.dumps(index, indent=2))


def toy_text_encoders(model: DiTConfig) -> dict[str, tuple[object, None]]:
    """The toy byte encoders (`TinyTextEncoders.for_model`) as diffusers components, with their exact tables."""
    from megatron_moviegen.hf.text_encoder import MovieGenByteTextEncoder
    from megatron_moviegen.models.toy_encoders import TinyTextEncoders

    toy = TinyTextEncoders.for_model(model)
    out = {}
    for name, (width, max_length) in toy.shapes.items():
        encoder = MovieGenByteTextEncoder(width=width, max_length=max_length, quoted_text_only=name == "byt5")
        byte_table, positions = toy.tables[name]
        encoder.load_state_dict({"byte_table": byte_table, "positions": positions})
        out[name] = (encoder, None)
    return out


def paper_text_encoders(encoders) -> dict[str, tuple[object, object]]:
    """Loaded `text.TextEncoders` -> {name: (transformers model, tokenizer)}."""
    return {name: (encoder.model, encoder.tokenizer) for name, encoder in encoders.encoders.items()}


# ---- diffusers -> ours ---------------------------------------------------------------------------------------
def read_diffusers_transformer(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a diffusers model folder (single file or sharded with an index)."""
    index = folder / f"{WEIGHTS_PREFIX}.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else [f"{WEIGHTS_PREFIX}.safetensors"])
    tensors = {}
    for file in files:
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder}: no {file} (a diffusers MovieGenTransformer3DModel folder holds "
                                    f"config.json and {WEIGHTS_PREFIX}*.safetensors)")
        with safe_open(str(folder / file), framework="pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def import_diffusers(pipeline: str | Path, out: str | Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """A diffusers pipeline folder (or its transformer/ folder) -> our export folder `out`, which `generate`,
    `tools/export_checkpoint.py` and `export_to_training_checkpoint` read. The config is the exported one
    (moviegen_config.yaml) with the model fields of transformer/config.json."""
    from megatron_moviegen.hf.transformer import dit_config_of

    folder = Path(pipeline)
    folder = folder / "transformer" if (folder / "transformer").is_dir() else folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(pipeline)!r}: no transformer/config.json (not a MovieGenVideoPipeline folder)")
    model = dit_config_of(json.loads((folder / "config.json").read_text()))
    data = read_recipe(folder / MOVIEGEN_CONFIG, folder) if (folder / MOVIEGEN_CONFIG).is_file() else {}
    cfg = build(MovieGenConfig, {**data, "parallel": {}})
    saved = cfg.model
    cfg.model = DiTConfig(**{**vars(saved), **{k: getattr(model, k) for k in transformer_config(model)}})
    tensors = from_diffusers(read_diffusers_transformer(folder), model.num_attention_heads)
    return write_export_tensors(out, cfg, tensors, max_shard_bytes)


def export_to_training_checkpoint(export: str | Path, checkpoint_dir: str | Path,
                                  layout_overrides: Optional[list[str]] = None) -> Path:
    """Our export folder -> a weights-only training checkpoint (step 0, `latest`) under `checkpoint_dir`: a start
    for `train.load_from` (fine-tuning, a new stage). Every rank of the layout in `layout_overrides` calls it."""
    from megatron_moviegen.checkpoints.distributed import save_checkpoint
    from megatron_moviegen.checkpoints.export import load_exported_dit
    from megatron_moviegen.parallel.initialize import destroy

    cfg, chunks = load_exported_dit(export, layout_overrides)
    step_dir = save_checkpoint(checkpoint_dir, 0, chunks, None, None, None, cfg)
    destroy()
    return step_dir



def export_pipeline(checkpoint: str | Path, out: str | Path, tae: Optional[str] = None,
                    text_encoders: Optional[str] = None, text_overrides: Optional[list[str]] = None,
                    dtype: Optional[torch.dtype] = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """`tools/export_diffusers.py`: an export folder or a training checkpoint (converted to an export first, in
    `<out>.export.tmp`, removed after) + the TAE and text encoders by name (inference/components.py; None: those the
    model was trained with, as pre-encoding recorded them) -> `out`."""
    from megatron_moviegen.checkpoints.export import check_export_folder, export_training_checkpoint
    from megatron_moviegen.inference.components import default_sources, load_tae, load_text_encoders

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} exists; give a new folder (nothing was written)")
    source = Path(checkpoint)
    staged = None
    try:
        check_export_folder(source)
    except FileNotFoundError:
        if not source.exists():
            raise
        staged = out.with_name(out.name + ".export.tmp")
        source = export_training_checkpoint(checkpoint, staged, dtype=dtype or torch.bfloat16,
                                            max_shard_bytes=max_shard_bytes)
    try:
        model = read_exported_config(source).model
        transformer_config(model)  # refuse a model the pipeline cannot run before loading anything else
        tae, text_encoders, text_overrides = default_sources(tae, text_encoders, list(text_overrides or []), model)
        encoders = load_text_encoders(text_encoders, text_overrides, model)
        components = toy_text_encoders(model) if text_encoders == "toy" else paper_text_encoders(encoders)
        return export_diffusers(source, out, load_tae(tae), components, dtype, max_shard_bytes)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
