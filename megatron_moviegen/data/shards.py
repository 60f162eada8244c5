"""The on-disk format of pre-encoded samples: WebDataset tar shards plus the description energon reads.

    <out>/shard-000012.tar            # WebDataset: <key>.latents.safetensors, .conditioning.safetensors, .json
    <out>/index/shard-000012.json     # written last: the shard is complete; its samples, byte offsets, rejects
    <out>/index/table.json, table-*.bin  # by finalisation: a bucket id per sample, what the loader plans from
    <out>/.nv-meta/dataset.yaml, split.yaml, .info.yaml, .info.json   # megatron-energon's dataset description
    <out>/rejects.jsonl, summary.json
    <out>/preencode.json              # the run's manifest hash, settings and encoders (`shard_encoders`)

Per sample: latents (c, t, h, w) bf16; its `Conditioning` (conditioning.py: per token source
`tokens.<name>.embeddings` (n, d) bf16 and `tokens.<name>.mask` (n,) bool; `channels`, `task` when present);
the JSON holds caption, prompt, fps, frame count, bucket, source path and the source's sha256.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.utils.io import atomic_write_text, read_json_file, reading, temporary_path

INDEX_DIR = "index"
META_DIR = ".nv-meta"
FINALIZE_LOCK = ".finalize.lock"
RUN_RECORD = "preencode.json"
MEMBERS = ("latents.safetensors", "conditioning.safetensors", "json")
LEGACY_TEXT_MEMBER = "text.safetensors"  # shards written before the Conditioning type: `<name>.embeddings/.mask`


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:06d}.tar"


def sample_key(manifest_index: int) -> str:
    """A key unique over the whole dataset (energon rejects duplicates): the entry's manifest position."""
    return f"{manifest_index:09d}"


@dataclass
class EncodedSample:
    key: str
    latents: torch.Tensor  # (c, t, h, w)
    conditioning: Conditioning  # one sample's (no batch dim)
    # caption, prompt, prompt_fps (None: no FPS prefix), fps, num_frames, bucket, is_image, source, sha256
    meta: dict[str, Any]

    def members(self, latent_dtype: torch.dtype) -> dict[str, bytes]:
        return {
            "latents.safetensors": save_safetensors({"latents": self.latents.to(latent_dtype).contiguous()}),
            "conditioning.safetensors": save_safetensors(self.conditioning.to_tensors(latent_dtype)),
            "json": json.dumps(self.meta, sort_keys=True).encode(),
        }


@dataclass
class ShardIndex:
    """What `index/<shard>.json` records: the shard's samples with member byte ranges, and its rejects."""

    shard: str
    samples: list[dict] = field(default_factory=list)  # key, bucket, is_image, members: {suffix: [offset, size]}
    rejects: list[dict] = field(default_factory=list)  # path, index, reason

    @classmethod
    def read(cls, path: Path) -> "ShardIndex":
        with reading(path, "shard index"):
            index = cls(**json.loads(path.read_bytes().decode()))
            if index.shard != path.name[: -len(".json")]:
                raise ValueError(f"it describes {index.shard!r}, expected {path.name[: -len('.json')]!r}")
            return index


def write_shard(out_dir: Path, shard_id: int, samples: list[EncodedSample], rejects: list[dict],
                latent_dtype: torch.dtype, kept: list[dict] = ()) -> ShardIndex:
    """Write the tar under a temporary name, rename it, then write its index (which marks it complete).

    `kept`: index records of samples already in this shard's tar, copied byte for byte (a complete shard
    rewritten to add retried samples). Its index is removed before the tar is replaced, so a crash in between
    leaves an incomplete shard (redone by the next run), never an index describing another tar.
    """
    name = shard_name(shard_id)
    rows = [(s.key, s.meta["bucket"], s.meta["is_image"], s.meta["prompt_fps"], s.members(latent_dtype))
            for s in samples]
    rows += [(r["key"], r["bucket"], r["is_image"], r.get("prompt_fps"),
              {suffix: read_member(out_dir / name, *span) for suffix, span in r["members"].items()}) for r in kept]
    rows.sort(key=lambda row: row[0])  # manifest order, however the samples were batched
    index = ShardIndex(shard=name, rejects=rejects)
    index_path = out_dir / INDEX_DIR / f"{name}.json"
    index_path.unlink(missing_ok=True)
    if rows:
        tmp = temporary_path(out_dir / name)
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, _, _, _, members in rows:
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    tar.addfile(info, io.BytesIO(data))
        index.samples = _member_offsets(tmp, rows)
        os.replace(tmp, out_dir / name)
    (out_dir / INDEX_DIR).mkdir(exist_ok=True)
    atomic_write_text(index_path, json.dumps(index.__dict__))
    return index


def _member_offsets(tar_path: Path, rows: list[tuple]) -> list[dict]:
    with tarfile.open(tar_path, "r") as tar:
        offsets = {m.name: [m.offset_data, m.size] for m in tar.getmembers()}
    return [
        {
            "key": key,
            "bucket": bucket,
            "is_image": is_image,
            "prompt_fps": fps,  # the FPS-n the sample was encoded with; what the loader reports
            "members": {suffix: offsets[f"{key}.{suffix}"] for suffix in members},
        }
        for key, bucket, is_image, fps, members in rows
    ]


def completed_shards(out_dir: Path) -> set[str]:
    """Names of the shards whose index exists: one listing of `index/`."""
    folder = out_dir / INDEX_DIR
    if not folder.exists():
        return set()
    return {entry.name[: -len(".json")] for entry in os.scandir(folder) if entry.name.endswith(".tar.json")}


def remove_partial_files(out_dir: Path, shard_ids: Iterable[int]) -> None:
    """Temporary files a killed run left behind for these shards (only these: other ranks may be writing), found
    in one listing of `out_dir` and one of `index/` whatever the number of shards."""
    names = {shard_name(k) for k in shard_ids}
    for folder in (out_dir, out_dir / INDEX_DIR):
        if not folder.exists():
            continue
        for entry in os.scandir(folder):
            # `temporary_path`: .shard-000012.tar.<pid>.tmp, index/.shard-000012.tar.json.<pid>.tmp
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and _shard_of(entry.name[1:]) in names:
                Path(entry.path).unlink(missing_ok=True)


def _shard_of(name: str) -> str:
    """"shard-000012.tar.json.7.tmp" -> "shard-000012.tar"."""
    return name[: name.find(".tar") + len(".tar")]


def read_member(shard_path: Path, offset: int, size: int) -> bytes:
    with open(shard_path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{shard_path}: short read at offset {offset} ({len(data)} of {size} bytes)")
    return data


def decode_sample(members: dict[str, bytes]) -> dict[str, Any]:
    """Raw member bytes -> {"latents": (c, t, h, w), "conditioning": Conditioning (no batch dim), "meta": {...}}."""
    if LEGACY_TEXT_MEMBER in members:
        tensors = load_safetensors(members[LEGACY_TEXT_MEMBER])
        tensors = {f"tokens.{key}": value for key, value in tensors.items()}
    else:
        tensors = load_safetensors(members["conditioning.safetensors"])
    return {
        "latents": load_safetensors(members["latents.safetensors"])["latents"],
        "conditioning": Conditioning.from_tensors(tensors),
        "meta": json.loads(members["json"]),
    }


def shard_encoders(shards_dir: str | Path) -> dict[str, dict] | None:
    """The encoders pre-encoding recorded for a shard folder, {role: {"name", "sha256"}} (roles: video, text,
    audio, video features, reference), or None for shards written before encoders were recorded."""
    path = Path(shards_dir) / RUN_RECORD
    if not path.is_file():
        return None
    return read_json_file(path, "pre-encoding record").get("encoders")


def encoder_mismatch(was: dict[str, dict] | None, now: dict[str, dict] | None) -> list[tuple[str, str, str]]:
    """(role, was, now) as "<name> (weights sha256 <12 hex>)" for each role both records have with other weights;
    a role only one has (a later stage's new encoder) or a missing record is no mismatch."""
    return [(role, encoder_name(was[role]), encoder_name(now[role]))
            for role in sorted(set(was or {}) & set(now or {})) if not same_encoder(was[role], now[role])]


def same_encoder(was: dict | None, now: dict) -> bool:
    """Two encoder records name the same weights (their sources may differ: a folder moved or copied)."""
    return was is not None and (was.get("name"), was.get("sha256")) == (now.get("name"), now.get("sha256"))


def encoder_name(record: dict) -> str:
    return f"{record.get('name')} (weights sha256 {str(record.get('sha256'))[:12]})"


def write_energon_metadata(out_dir: Path, shard_counts: dict[str, int], workers: int | None = 1) -> None:
    """The `.nv-meta/` folder megatron-energon reads (a CrudeWebdataset with one `train` split), from the sample
    count of each shard that has samples.

    When energon is installed and `workers` is not None, its own `prepare_dataset` also builds the random-access
    sqlite index, reading every tar with `workers` processes.
    """
    meta = out_dir / META_DIR
    meta.mkdir(exist_ok=True)
    shards = sorted(shard_counts)
    try:
        from megatron.energon.flavors.webdataset.base_webdataset import BaseWebdatasetFactory
    except ImportError:
        BaseWebdatasetFactory = None
    if BaseWebdatasetFactory is not None and shards and workers is not None:
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the tool's report
            BaseWebdatasetFactory.prepare_dataset(out_dir, shards, split_parts_patterns=[("train", ".*")],
                                                  shuffle_seed=None, workers=workers)
    info = {"energon_version": _energon_version(), "shard_counts": shard_counts}
    atomic_write_text(meta / ".info.yaml", yaml.safe_dump(info))
    atomic_write_text(meta / ".info.json", json.dumps(info, indent=2))
    atomic_write_text(meta / "split.yaml", yaml.safe_dump({"split_parts": {"train": shards}, "exclude": []}))
    atomic_write_text(meta / "dataset.yaml",
                      yaml.safe_dump({"__module__": "megatron.energon", "__class__": "CrudeWebdataset"}))


def _energon_version() -> str | None:
    try:
        from megatron.energon import __version__
    except ImportError:
        return None
    return __version__
