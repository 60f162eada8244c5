"""Pre-encoding (SPEC section 4: latents are computed once and cached): manifest -> decode -> bucket ->
TAE encode -> text encoders -> WebDataset shards.

Shard k holds manifest entries [k * shard_size, (k + 1) * shard_size) minus the rejected ones, so a shard's
content depends only on the manifest and the config, never on how many processes ran or when one died.
Rank r of a torchrun/srun job writes shards k with k % world_size == r. A shard is complete once its index
file exists; a rerun skips complete shards and redoes the rest from scratch, so a killed run resumes with
no duplicates and no losses. Whichever rank finds every shard complete writes rejects.jsonl, summary.json and
energon's `.nv-meta/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, Union

import av
import torch
from tqdm import tqdm

from megatron_moviegen.conditioning import Conditioning, TextEncoder
from megatron_moviegen.config.schema import ConfigError, to_dict
from megatron_moviegen.data.buckets import Assignment, Bucket, BucketTable, Rejection
from megatron_moviegen.data.config import BucketConfig, DataConfig
from megatron_moviegen.data.decode import DecodeError, Decoder, build_decoder, to_unit_range
from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.text.prompts import conditioning_prompt
from megatron_moviegen.data.shards import (
    EncodedSample,
    ShardIndex,
    atomic_write_text,
    FINALIZE_LOCK,
    completed_shards,
    remove_partial_files,
    sample_key,
    shard_name,
    write_energon_metadata,
    write_shard,
)

INPUT_ERRORS = (DecodeError, OSError, ValueError, av.FFmpegError)


class VideoEncoder(Protocol):
    """What pre-encoding needs of the TAE (`models.toy_encoders.TAEVideoEncoder`, or a toy one)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 3, t, h, w) in [-1, 1] -> latents (b, 16, ceil(t/8), h/8, w/8)."""


@dataclass
class Prepared:
    """One decoded sample waiting for its encode batch."""

    index: int
    entry: ManifestEntry
    bucket: Bucket
    fps: float
    frames: torch.Tensor  # (t, h, w, 3) uint8
    sha256: str


@dataclass
class Rejected:
    index: int
    path: str
    reason: str

    def record(self) -> dict:
        return {"index": self.index, "path": self.path, "reason": self.reason}


@dataclass
class RunSummary:
    """What this process did in this run (completed shards from earlier runs are not counted)."""

    encoded: int = 0
    rejected: int = 0
    frames: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    per_bucket: Counter = field(default_factory=Counter)

    @property
    def samples_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds else 0.0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assign_entry(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder) -> Union[Assignment, Rejected]:
    try:
        info = decoder.probe(entry.path)
    except INPUT_ERRORS as exc:
        return Rejected(index, entry.path, f"{type(exc).__name__}: {exc}")
    if entry.fps is not None and not info.is_image:
        info = replace(info, fps=entry.fps)
    result = table.assign(info, entry.start_s, entry.end_s, key=entry.path)
    return Rejected(index, entry.path, result.reason) if isinstance(result, Rejection) else result


def prepare_entry(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder) -> Union[Prepared, Rejected]:
    """Probe, bucket and decode one manifest entry; any problem with the input becomes a Rejected."""
    assignment = assign_entry(index, entry, table, decoder)
    if isinstance(assignment, Rejected):
        return assignment
    try:
        frames = decoder.clip_frames(entry.path, assignment.clip)
        sha256 = file_sha256(entry.path)
    except INPUT_ERRORS as exc:
        return Rejected(index, entry.path, f"{type(exc).__name__}: {exc}")
    return Prepared(index, entry, assignment.bucket, assignment.clip.fps, frames, sha256)


_worker_state: dict = {}


def _init_worker(bucket_config: BucketConfig, decoder_name: str) -> None:
    torch.set_num_threads(1)
    _worker_state["table"] = BucketTable(bucket_config)
    _worker_state["decoder"] = build_decoder(decoder_name)


def _prepare_in_worker(item: tuple[int, ManifestEntry]) -> Union[Prepared, Rejected]:
    return prepare_entry(item[0], item[1], _worker_state["table"], _worker_state["decoder"])


def _assign_in_worker(item: tuple[int, ManifestEntry]) -> Union[Assignment, Rejected]:
    return assign_entry(item[0], item[1], _worker_state["table"], _worker_state["decoder"])


def ordered_map(fn: Callable, items: Iterable, num_workers: int, bucket_config: BucketConfig,
                decoder_name: str) -> Iterator:
    """`map(fn, items)` in order, on `num_workers` spawned processes (in-process when 0) with a bounded queue."""
    if num_workers == 0:
        _init_worker(bucket_config, decoder_name)
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(bucket_config, decoder_name)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Preencoder:
    """Writes the shards of one rank. `on_prepared(n)` is called after each decoded sample (tests inject crashes)."""

    def __init__(self, config: DataConfig, video_encoder: VideoEncoder, text_encoder: TextEncoder, out_dir: str | Path,
                 device: str = "cpu", rank: int = 0, world_size: int = 1,
                 on_prepared: Optional[Callable[[int], None]] = None):
        config.validate()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank: got {rank}, must be in [0, world_size={world_size})")
        if config.decoder != "pyav" and config.num_workers > 0:
            raise ConfigError(f"num_workers: got {config.num_workers}; decoder {config.decoder} runs in-process, use 0")
        self.config = config
        self.video_encoder = video_encoder
        self.text_encoder = text_encoder
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.on_prepared = on_prepared
        self.latent_dtype = getattr(torch, config.latent_dtype)

    def shard_plan(self, entries: list[ManifestEntry]) -> list[list[tuple[int, ManifestEntry]]]:
        size = self.config.shard_size
        items = list(enumerate(entries))
        return [items[k : k + size] for k in range(0, len(items), size)]

    def dry_run(self, entries: list[ManifestEntry]) -> tuple[Counter, list[Rejected]]:
        """Bucket counts and rejects from file headers alone (nothing decoded, nothing written)."""
        counts: Counter = Counter()
        rejects = []
        results = ordered_map(_assign_in_worker, list(enumerate(entries)), self.config.num_workers,
                              self.config.buckets, self.config.decoder)
        for result in tqdm(results, total=len(entries), desc="probing", unit="sample", disable=self.rank != 0):
            if isinstance(result, Rejected):
                rejects.append(result)
            else:
                counts[result.bucket.name] += 1
        return counts, rejects

    def run(self, entries: list[ManifestEntry]) -> RunSummary:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._check_run_config(entries)
        plan = self.shard_plan(entries)
        done = completed_shards(self.out_dir)
        mine = [k for k in range(len(plan)) if k % self.world_size == self.rank]
        todo = [k for k in mine if shard_name(k) not in done]
        remove_partial_files(self.out_dir, todo)
        if self.rank == 0:
            (self.out_dir / FINALIZE_LOCK).unlink(missing_ok=True)  # left by a run killed while finalizing
        summary = RunSummary(shards_skipped=len(mine) - len(todo))
        start = time.perf_counter()
        items = [item for k in todo for item in plan[k]]
        results = ordered_map(_prepare_in_worker, items, self.config.num_workers, self.config.buckets,
                              self.config.decoder)
        with tqdm(total=len(items), desc=f"pre-encoding (rank {self.rank})", unit="sample",
                  disable=self.rank != 0) as bar:
            for k in todo:
                self._write_one_shard(k, [next(results) for _ in plan[k]], summary, bar)
        summary.seconds = time.perf_counter() - start
        if len(completed_shards(self.out_dir)) == len(plan):
            finalize_once(self.out_dir, len(plan))
        return summary

    def _write_one_shard(self, shard_id: int, results: list, summary: RunSummary, bar: tqdm) -> None:
        pending: dict[str, list[Prepared]] = {}
        samples: list[EncodedSample] = []
        rejects: list[dict] = []
        for result in results:
            if isinstance(result, Rejected):
                rejects.append(result.record())
                summary.rejected += 1
            else:
                batch = pending.setdefault(result.bucket.name, [])
                batch.append(result)
                if len(batch) == self.config.encode_batch_size:
                    samples += self.encode_batch(pending.pop(result.bucket.name))
            bar.update(1)
            if self.on_prepared is not None:
                self.on_prepared(bar.n)
        for name in sorted(pending):
            samples += self.encode_batch(pending[name])
        write_shard(self.out_dir, shard_id, samples, rejects, self.latent_dtype)
        summary.shards_written += 1
        summary.encoded += len(samples)
        for s in samples:
            summary.per_bucket[s.meta["bucket"]] += 1
            summary.frames += s.meta["num_frames"]

    @torch.no_grad()
    def encode_batch(self, batch: list[Prepared]) -> list[EncodedSample]:
        """One bucket's decoded samples -> latents and text embeddings, moved to CPU."""
        pixels = torch.stack([to_unit_range(p.frames) for p in batch]).to(self.device)  # (b, 3, t, h, w)
        latents = self.video_encoder.encode(pixels).cpu()  # (b, 16, t', h', w')
        prompts = [conditioning_prompt(p.entry.caption, None if p.bucket.is_image else p.fps) for p in batch]
        conditioning = Conditioning(tokens=self.text_encoder.encode(prompts)).to("cpu")
        return [
            EncodedSample(
                key=sample_key(p.index),
                latents=latents[i],
                conditioning=conditioning.map(lambda tensor, i=i: tensor[i]),
                meta={
                    "caption": p.entry.caption,
                    "prompt": prompts[i],
                    "fps": p.fps,
                    "num_frames": p.bucket.num_frames,
                    "bucket": p.bucket.name,
                    "is_image": p.bucket.is_image,
                    "source": p.entry.path,
                    "start_s": p.entry.start_s,
                    "sha256": p.sha256,
                    "latent_shape": list(latents[i].shape),
                },
            )
            for i, p in enumerate(batch)
        ]

    def _check_run_config(self, entries: list[ManifestEntry]) -> None:
        """Refuse to resume into a folder written from another manifest or config (shards would not line up)."""
        manifest_hash = hashlib.sha256(json.dumps([e.__dict__ for e in entries]).encode()).hexdigest()
        record = {"manifest_sha256": manifest_hash, "num_entries": len(entries),
                  "shard_size": self.config.shard_size, "buckets": to_dict(self.config.buckets),
                  "latent_dtype": self.config.latent_dtype}
        path = self.out_dir / "preencode.json"
        if path.exists():
            previous = json.loads(path.read_text())
            changed = sorted(k for k in record if previous.get(k) != record[k])
            if changed:
                raise ConfigError(f"{self.out_dir} was written with different {changed}; use a new output folder")
        else:
            atomic_write_text(path, json.dumps(record, indent=2))


def finalize_once(out_dir: Path, num_shards: int) -> None:
    """`finalize` by the first rank to see every shard complete; the others leave it to that one."""
    lock = out_dir / FINALIZE_LOCK
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return
    try:
        finalize(out_dir, num_shards)
    finally:
        lock.unlink()


def finalize(out_dir: Path, num_shards: int) -> dict:
    """From the shard indexes: rejects.jsonl, summary.json (counts per bucket) and energon's `.nv-meta/`."""
    indexes = [ShardIndex.read(out_dir / "index" / f"{shard_name(k)}.json") for k in range(num_shards)]
    rejects = [r for ix in indexes for r in ix.rejects]
    per_bucket = Counter(s["bucket"] for ix in indexes for s in ix.samples)
    per_fps = Counter(s["prompt_fps"] for ix in indexes for s in ix.samples if s.get("prompt_fps") is not None)
    summary = {
        "samples": sum(per_bucket.values()),
        "rejected": len(rejects),
        "shards": sum(1 for ix in indexes if ix.samples),
        "per_bucket": dict(sorted(per_bucket.items())),
        "per_prompt_fps": {str(fps): n for fps, n in sorted(per_fps.items())},  # the FPS-n prefixes trained on
    }
    atomic_write_text(out_dir / "rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects))
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    write_energon_metadata(out_dir, indexes)
    return summary
