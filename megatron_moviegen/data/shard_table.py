"""The shard table: every sample's bucket in two bytes, so the loader plans an epoch without reading shard indexes.

Written by finalisation (`preencode.finalize`) in one streaming pass over `index/<shard>.json`:

    <out>/index/table.json         {"format", "shards", "samples", "sha256", "buckets": [[name, is_image]],
                                    "prompt_fps"}; written last
    <out>/index/table-shards.bin   per shard with samples, in shard-name order: int64 (shard id, first sample
                                   position in table-buckets.bin, key of its first sample or -1)
    <out>/index/table-buckets.bin  per sample, in shard-name then index order: uint16 bucket id

The loader memory-maps the two arrays, so a rank touches only the pages of its own shards. `sha256` is the
dataset's fingerprint: sha256 over "<shard>\\t<samples>\\t<sha256 of its index records>\\n" per shard in name
order, the same from a loader state saved before the table existed (its per-shard "index" entries).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from megatron_moviegen.utils.io import atomic_output, atomic_write_text, read_json_file

TABLE = "table.json"
SHARDS_FILE = "table-shards.bin"
BUCKETS_FILE = "table-buckets.bin"
FORMAT = 1
_SHARD_ROW = np.dtype([("shard_id", "<i8"), ("start", "<i8"), ("first_key", "<i8")])


def records_sha256(records: list[dict]) -> str:
    """sha256 of a shard's index records (keys, buckets, member offsets and sizes)."""
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


def dataset_sha256(shards: Iterable[tuple[str, int, str]]) -> str:
    """The fingerprint of (shard name, sample count, records sha256) per shard, given in shard-name order."""
    digest = hashlib.sha256()
    for name, samples, sha in shards:
        digest.update(f"{name}\t{samples}\t{sha}\n".encode())
    return digest.hexdigest()


@dataclass
class ShardSummary:
    """What the table and finalisation need of one shard's index: a few values per sample."""

    shard_id: int
    name: str
    buckets: list[tuple[str, bool]]  # (bucket, is_image) per sample, in index order
    prompt_fps: list[int]  # of its videos
    first_key: str
    sha256: str  # `records_sha256`
    rejects: list[dict]


def summarise(shard_id: int, name: str, records: list[dict], rejects: list[dict] = ()) -> ShardSummary:
    return ShardSummary(shard_id, name, [(r["bucket"], bool(r["is_image"])) for r in records],
                        [r["prompt_fps"] for r in records if r.get("prompt_fps") is not None],
                        records[0]["key"] if records else "", records_sha256(records), list(rejects))


class TableWriter:
    """Streams shard summaries (in name order) into the two arrays; memory O(buckets), whatever the sample count."""

    def __init__(self, shards_sink: BinaryIO, buckets_sink: BinaryIO):
        self.shards_sink, self.buckets_sink = shards_sink, buckets_sink
        self.bucket_ids: dict[str, int] = {}
        self.is_image: list[bool] = []
        self.prompt_fps: set[int] = set()
        self.shards = self.samples = 0
        self.digest = hashlib.sha256()

    def add(self, shard: ShardSummary) -> None:
        count = len(shard.buckets)
        if not count:
            return
        ids = np.fromiter((self._bucket_id(*bucket) for bucket in shard.buckets), "<u2", count)
        self.buckets_sink.write(ids.tobytes())
        first_key = int(shard.first_key) if shard.first_key.isdigit() else -1
        self.shards_sink.write(np.array([(shard.shard_id, self.samples, first_key)], dtype=_SHARD_ROW).tobytes())
        self.digest.update(f"{shard.name}\t{count}\t{shard.sha256}\n".encode())
        self.prompt_fps.update(shard.prompt_fps)
        self.shards += 1
        self.samples += count

    def _bucket_id(self, bucket: str, is_image: bool) -> int:
        if bucket not in self.bucket_ids:
            if len(self.bucket_ids) == 2**16:
                raise ValueError(f"more than {2**16} buckets in the shards; the table holds bucket ids as uint16")
            self.bucket_ids[bucket] = len(self.bucket_ids)
            self.is_image.append(is_image)
        return self.bucket_ids[bucket]

    def header(self) -> dict:
        return {"format": FORMAT, "shards": self.shards, "samples": self.samples,
                "sha256": self.digest.hexdigest(),
                "buckets": [[name, image] for name, image in zip(self.bucket_ids, self.is_image)],
                "prompt_fps": sorted(self.prompt_fps)}


def write_table(index_dir: Path, shards: Iterable[ShardSummary]) -> dict:
    """The table of `shards` (in name order) in `index_dir`; returns its header."""
    with atomic_output(index_dir / SHARDS_FILE) as shards_tmp, atomic_output(index_dir / BUCKETS_FILE) as buckets_tmp:
        with open(shards_tmp, "wb") as shards_sink, open(buckets_tmp, "wb") as buckets_sink:
            writer = TableWriter(shards_sink, buckets_sink)
            for shard in shards:
                writer.add(shard)
    header = writer.header()
    atomic_write_text(index_dir / TABLE, json.dumps(header))
    return header


@dataclass
class ShardTable:
    """The table as the loader reads it. Positions are in shard-name order (what `sorted(names)` gives)."""

    shards: np.ndarray  # (S,) of _SHARD_ROW
    buckets: np.ndarray  # (M,) uint16
    bucket_names: list[str]
    bucket_is_image: list[bool]
    prompt_fps: list[int]
    sha256: str

    @classmethod
    def read(cls, index_dir: Path) -> "ShardTable":
        """Memory-maps the arrays finalisation wrote; FileNotFoundError when there is no table (older shards)."""
        header = read_json_file(index_dir / TABLE, "shard table")
        if header.get("format") != FORMAT:
            raise ValueError(f"{index_dir / TABLE}: format {header.get('format')!r}, this code reads {FORMAT}; "
                             "pre-encode again into this folder (complete shards are kept) to rewrite it")
        shards = _mapped(index_dir / SHARDS_FILE, _SHARD_ROW, header["shards"])
        buckets = _mapped(index_dir / BUCKETS_FILE, np.dtype("<u2"), header["samples"])
        return cls(shards, buckets, [b[0] for b in header["buckets"]], [b[1] for b in header["buckets"]],
                   header["prompt_fps"], header["sha256"])

    @classmethod
    def build(cls, shards: Iterable[ShardSummary]) -> "ShardTable":
        """The same table in memory, from shard indexes read now (a folder finalised before tables existed)."""
        shards_sink, buckets_sink = io.BytesIO(), io.BytesIO()
        writer = TableWriter(shards_sink, buckets_sink)
        for shard in shards:
            writer.add(shard)
        header = writer.header()
        return cls(np.frombuffer(shards_sink.getvalue(), _SHARD_ROW), np.frombuffer(buckets_sink.getvalue(), "<u2"),
                   [b[0] for b in header["buckets"]], [b[1] for b in header["buckets"]], header["prompt_fps"],
                   header["sha256"])

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @property
    def num_samples(self) -> int:
        return len(self.buckets)

    def bounds(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first sample, sample count) of the shards at `positions` (int64 arrays)."""
        starts = self.shards["start"]
        following = positions + 1
        ends = np.where(following < len(starts), starts[np.minimum(following, len(starts) - 1)], self.num_samples)
        return starts[positions], ends - starts[positions]


def _mapped(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    size = path.stat().st_size
    if size != count * dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes, the shard table says {count} entries of {dtype.itemsize} bytes; it "
                         "was cut short or rewritten: pre-encode again into this folder to finalise it anew")
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.empty(0, dtype)
