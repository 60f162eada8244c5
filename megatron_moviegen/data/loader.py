"""Training batches from pre-encoded latent shards: one bucket per batch, a fixed image:video batch ratio,
shards split over data-parallel ranks, deterministic for a seed, and resumable from `state_dict()`.

Reads the shards with its own random-access tar reader over `index/<shard>.json` (member byte offsets
written by pre-encoding), not through megatron-energon: bucket grouping and the image:video ratio are
planned from the finaliser's shard table (`shard_table.py`: a bucket id per sample) without opening a sample
or an index, and the position is just (epoch, batch) so a restore is exact and costs nothing. A rank reads the
index of a shard when a batch first needs one of its samples. The same shards are a valid energon
CrudeWebdataset for other tools.

Epoch e: shards are shuffled with (seed, e) and dealt round-robin to ranks; each rank shuffles its samples,
cuts each bucket into batches (a bucket's incomplete last batch waits for the next epoch), shuffles image and
video batches, and interleaves them so that the first k batches hold floor(k * image_fraction) image batches.
The epoch ends when the kind due next runs out.

The checkpointed state is O(1): the position, the settings, and the dataset's identity (shard and sample counts,
the table's sha256); a resume into other shards is refused naming what changed.
"""

from __future__ import annotations

import json
import logging
import random
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.shard_table import TABLE, ShardTable, dataset_sha256, summarise
from megatron_moviegen.data.shards import INDEX_DIR, META_DIR, ShardIndex, decode_sample, read_member, shard_name
from megatron_moviegen.utils.io import read_json_file


@dataclass
class Batch:
    latents: torch.Tensor  # (b, 16, t, h, w), the stored dtype (bf16 by default)
    conditioning: Conditioning  # batch-first
    bucket: str
    is_image: bool
    keys: list[str]
    fps: torch.Tensor  # (b,) sampling fps; 0 for images
    captions: list[str]


class DamagedShardError(ValueError):
    """A shard's bytes do not hold the sample its index says they do."""


SampleRef = tuple[str, dict]  # (shard name, the sample's record in its shard index)
log = logging.getLogger("megatron_moviegen.data")
CACHED_INDEXES = 64  # shard indexes a reading rank keeps (read again when a later batch needs an evicted one)


@dataclass(frozen=True)
class DatasetIdentity:
    """What a loader state records of its shards, O(1) whatever their size."""

    shards: int
    samples: int
    sha256: str  # `shard_table.dataset_sha256`

    def change(self, now: "DatasetIdentity") -> str | None:
        """What differs from `now`, in words, or None."""
        if self == now:
            return None
        return (f"{self.shards} -> {now.shards} shards, {self.samples} -> {now.samples} samples, index sha256 "
                f"{self.sha256[:12]} -> {now.sha256[:12]}")


def saved_identity(state: dict) -> DatasetIdentity | None:
    """The identity in a loader state: this version's "dataset", or the one an older state's per-shard "index"
    fingerprints make; None for the oldest states (a "shards" name list, compared by name)."""
    if "dataset" in state:
        return DatasetIdentity(**state["dataset"])
    if "index" in state:
        index = state["index"]
        return DatasetIdentity(len(index), sum(entry["samples"] for entry in index.values()),
                               dataset_sha256((name, index[name]["samples"], index[name]["sha256"])
                                              for name in sorted(index)))
    return None


class EpochPlan(Sequence):
    """One rank's batches of an epoch as rows of sample positions in the shard table; `plan[i]` is batch i's
    `SampleRef`s (its shards' indexes are read then). After a batch-size change mid-epoch (`resized`) it is the
    batches before the change, then the rest of the epoch's samples re-cut at the new size."""

    def __init__(self, loader: "LatentLoader", rows: np.ndarray, earlier: tuple[np.ndarray, ...] = ()):
        self.loader = loader
        self.parts = (*earlier, rows)  # each (batches, batch_size) int
        self.ends = np.cumsum([len(part) for part in self.parts])

    @property
    def batch_size(self) -> int:
        """The size of the batches from the last change on."""
        return self.parts[-1].shape[1]

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} of an epoch plan of {len(self)}")
        part = int(np.searchsorted(self.ends, i, side="right"))
        return self.loader.sample_refs(self.parts[part][i - (self.ends[part - 1] if part else 0)])

    def __eq__(self, other) -> bool:
        return (isinstance(other, EpochPlan) and len(self.parts) == len(other.parts)
                and all(np.array_equal(a, b) for a, b in zip(self.parts, other.parts)))

    def resized(self, at: int, batch_size: int, rng: random.Random) -> "EpochPlan":
        """Batches [0, at) as they are, then this epoch's remaining samples (in their planned order) cut into
        batches of `batch_size` as `LatentLoader.epoch_plan` cuts an epoch (a bucket's incomplete last batch
        waits for the next epoch)."""
        kept, rest = [], []
        for part, end in zip(self.parts, self.ends):
            start = end - len(part)
            kept.append(part[:max(0, at - start)])
            rest.append(part[max(0, at - start):].reshape(-1))
        rows = self.loader.cut(np.concatenate(rest), batch_size, rng)
        return EpochPlan(self.loader, rows, tuple(part for part in kept if len(part)))


class LatentLoader:
    """An endless iterator of `Batch`es for one data-parallel rank.

    Construction reads the shard table's header and memory-maps its arrays: a loader that is never iterated (on
    the TP peers the feeder broadcasts batches to) reads no shard index and touches no per-sample data."""

    def __init__(self, shards_dir: str | Path, batch_size: int, image_fraction: float, seed: int,
                 dp_rank: int = 0, dp_size: int = 1, allow_changed_shards: bool = False,
                 batch_schedule: Sequence[tuple[int, int]] = ()):
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank: got {dp_rank}, must be in [0, dp_size={dp_size})")
        self.dir = Path(shards_dir)
        self.batch_size, self.image_fraction, self.seed = batch_size, image_fraction, seed
        # (batch number from the start of training, batch size from it on), ascending: batch_size until the first
        self.batch_schedule = [(int(at), int(size)) for at, size in batch_schedule]
        self.consumed = self.epoch_start = 0  # batches yielded since the start, and when this epoch began
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.table = self._read_table()
        self.identity = DatasetIdentity(self.table.num_shards, self.table.num_samples, self.table.sha256)
        self.allow_changed_shards = allow_changed_shards
        if self.table.num_shards < dp_size:
            raise ConfigError(f"{self.dir}: {self.table.num_shards} shards cannot be split over {dp_size} "
                              "data-parallel ranks")
        self.epoch, self.step = 0, 0
        self._plan: list | None = None  # [epoch, its EpochPlan]
        self._indexes: OrderedDict[int, list[dict]] = OrderedDict()  # table position -> records, latest last

    def _read_table(self) -> ShardTable:
        """The finaliser's shard table; for shards finalised before tables existed, built now from every index."""
        info_path = self.dir / META_DIR / ".info.json"
        if not info_path.exists():
            raise FileNotFoundError(f"{self.dir}: no {META_DIR}/.info.json; pre-encoding has not finished here")
        if (self.dir / INDEX_DIR / TABLE).exists():
            return ShardTable.read(self.dir / INDEX_DIR)
        names = sorted(read_json_file(info_path, "energon shard list")["shard_counts"])
        log.warning("%s: no %s/%s (finalised by an older version): reading all %d shard indexes now; pre-encode "
                    "again into this folder (complete shards are kept) to write it", self.dir, INDEX_DIR, TABLE,
                    len(names))
        return ShardTable.build(summarise(shard_id(name), name, self._read_index(name)) for name in names)

    def _read_index(self, name: str) -> list[dict]:
        return ShardIndex.read(self.dir / INDEX_DIR / f"{name}.json").samples

    def shard_at(self, position: int) -> str:
        """The name of the shard at a table position."""
        return shard_name(int(self.table.shards["shard_id"][position]))

    def prompt_fps(self) -> list[int]:
        """The FPS-n prefix values of every video in the shards (all ranks' shards), ascending."""
        return list(self.table.prompt_fps)

    def records(self) -> Iterator[SampleRef]:
        """Every sample of every shard (all ranks'), in shard-name order, one shard index in memory at a time."""
        for position in range(self.table.num_shards):
            name = self.shard_at(position)
            yield from ((name, record) for record in self._read_index(name))

    def epoch_plan(self, epoch: int, batch_size: int | None = None) -> EpochPlan:
        """This rank's batches for `epoch` (of `batch_size`, default the loader's first); nothing is read but its
        shards' bucket ids in the table.

        The same draws in the same order as when plans held index records (a shuffle's draws depend only on the
        length of what it shuffles), so a seed gives the batches it gave before the table. Memory: about 14
        bytes per sample of this rank at the peak (positions as int32 while the table has under 2**31 samples,
        shuffled in place; the interleave is computed in chunks), then 4 bytes per sample held for the epoch."""
        rng = random.Random(f"{self.seed}/{epoch}")
        mine = _shuffled(self.table.num_shards, rng)[self.dp_rank :: self.dp_size]
        positions = self._positions(*self.table.bounds(mine))
        rng.shuffle(positions)  # in place: the permutation shuffling range(len) would index with
        rows = self.cut(np.frombuffer(positions, _DTYPES[positions.typecode]), batch_size or self.batch_size, rng)
        if not len(rows):
            raise ValueError(f"rank {self.dp_rank}: epoch {epoch} has no batches of {batch_size or self.batch_size} "
                             f"with image_fraction {self.image_fraction}: the kind (image or video) due first has no "
                             "full batch in any bucket of this rank's shards")
        return EpochPlan(self, rows)

    def cut(self, positions: np.ndarray, batch_size: int, rng: random.Random) -> np.ndarray:
        """(batches, batch_size) rows of `positions` (in their order within each bucket): each bucket's full
        batches, image and video batches shuffled apart by `rng` and interleaved at image_fraction."""
        rows, num_images = self._bucket_rows(positions, batch_size)
        images, videos = array("i", range(num_images)), array("i", range(num_images, len(rows)))  # rows of `rows`
        rng.shuffle(images)
        rng.shuffle(videos)
        return rows[self._interleave(np.frombuffer(images, np.int32), np.frombuffer(videos, np.int32))]

    def _positions(self, starts: np.ndarray, counts: np.ndarray) -> array:
        """The table positions of these shards' samples, shard after shard, as a typed array to shuffle in place
        (int32 while the table has under 2**31 samples)."""
        typecode = "i" if self.table.num_samples < 2**31 else "q"
        out = array(typecode, [0]) * int(counts.sum())
        view = np.frombuffer(out, _DTYPES[typecode])
        offset = 0
        for start, count in zip(starts.tolist(), counts.tolist()):
            view[offset:offset + count] = np.arange(start, start + count)
            offset += count
        return out

    def _bucket_rows(self, positions: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
        """(batches, batch_size) rows of `positions`: image buckets' full batches first, then videos', each kind in
        bucket-name order; and how many rows are image batches."""
        buckets = np.asarray(self.table.buckets[positions])
        order = sorted(range(len(self.table.bucket_names)), key=self.table.bucket_names.__getitem__)
        order = sorted(order, key=lambda b: not self.table.bucket_is_image[b])  # stable: images first
        sizes = np.bincount(buckets, minlength=len(self.table.bucket_names))
        full = sizes - sizes % batch_size
        flat = np.empty(int(full.sum()), positions.dtype)
        offset = 0
        for bucket in order:
            flat[offset:offset + full[bucket]] = positions[buckets == bucket][:full[bucket]]
            offset += full[bucket]
        num_images = int(sum(full[b] for b in order if self.table.bucket_is_image[b])) // batch_size
        return flat.reshape(-1, batch_size), num_images

    def _interleave(self, images: np.ndarray, videos: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Batch k is an image batch when floor((k + 1) * image_fraction) > floor(k * image_fraction); the plan ends
        where the kind due runs out. Computed `chunk` batches at a time (int32 out, O(chunk) temporaries)."""
        total = len(images) + len(videos)
        plan = np.empty(total, dtype=np.int32)
        seen_images = 0
        for first in range(0, total, chunk):
            k = np.arange(first, min(first + chunk, total), dtype=np.float64)
            want_image = np.floor((k + 1) * self.image_fraction) > np.floor(k * self.image_fraction)
            images_through = seen_images + np.cumsum(want_image)  # image batches among batches 0..k
            nth = np.where(want_image, images_through - 1, k.astype(np.int64) - images_through)  # nth of its kind
            runs_out = np.flatnonzero(nth >= np.where(want_image, len(images), len(videos)))
            end = runs_out[0] if len(runs_out) else len(k)
            want_image, nth = want_image[:end], nth[:end]
            part = plan[first:first + end]
            part[want_image], part[~want_image] = images[nth[want_image]], videos[nth[~want_image]]
            if end < len(k):
                return plan[:first + end]
            seen_images += int(want_image.sum())
        return plan

    def sample_refs(self, positions: np.ndarray) -> list[SampleRef]:
        """(shard, index record) of the samples at table `positions`, reading their shards' indexes as needed."""
        starts = self.table.shards["start"]
        shards = np.searchsorted(starts, positions, side="right") - 1
        return [(self.shard_at(int(s)), self._records_at(int(s))[int(p - starts[s])])
                for s, p in zip(shards, positions)]

    def _records_at(self, position: int) -> list[dict]:
        """The index records of the shard at table `position` (the last CACHED_INDEXES kept), checked against the
        table: a shard rewritten after finalisation is an error naming it."""
        if position in self._indexes:
            self._indexes.move_to_end(position)
            return self._indexes[position]
        name = self.shard_at(position)
        records = self._read_index(name)
        (start,), (count,) = self.table.bounds(np.array([position]))
        table_buckets = [self.table.bucket_names[b] for b in self.table.buckets[start:start + count]]
        if [r["bucket"] for r in records] != table_buckets:
            raise ConfigError(
                f"{self.dir / INDEX_DIR / name}.json: {len(records)} samples, the shard table ({INDEX_DIR}/{TABLE}) "
                f"says {count}, or other buckets: the shard was rewritten after finalisation. Pre-encode again into "
                f"{self.dir} (complete shards are kept) to finalise it anew")
        self._indexes[position] = records
        if len(self._indexes) > CACHED_INDEXES:
            self._indexes.popitem(last=False)
        return records

    def __iter__(self) -> Iterator[Batch]:
        while True:
            plan = self._plan_for(self.epoch)
            while self.step < len(plan):
                size = self.batch_size_at(self.consumed)
                if size != plan.batch_size:  # the schedule changes the batch size here: re-cut the rest
                    plan = self._plan[1] = plan.resized(self.step, size, self._resize_rng(self.step, size))
                    continue
                refs = plan[self.step]
                self.step += 1
                self.consumed += 1
                yield self.read_batch(refs)
            self.epoch, self.step, self.epoch_start = self.epoch + 1, 0, self.consumed

    def batch_size_at(self, batch: int) -> int:
        """The batch size the schedule gives batch number `batch` (counted from the start of training)."""
        size = self.batch_size
        for at, scheduled in self.batch_schedule:
            if at <= batch:
                size = scheduled
        return size

    def _resize_rng(self, at: int, size: int) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{at}/{size}")

    def _plan_for(self, epoch: int) -> EpochPlan:
        """This epoch's plan as the run has cut it so far: at its first batch's size, re-cut at each scheduled
        change already passed in it (what a resume rebuilds from the saved position alone)."""
        if self._plan is None or self._plan[0] != epoch:
            plan = self.epoch_plan(epoch, self.batch_size_at(self.epoch_start))
            for at, size in self.batch_schedule:
                step = at - self.epoch_start
                if 0 < step <= self.step and step < len(plan) and size != plan.batch_size:
                    plan = plan.resized(step, size, self._resize_rng(step, size))
            self._plan = [epoch, plan]
        return self._plan[1]

    def read_batch(self, refs: list[SampleRef]) -> Batch:
        samples = [self.read_sample(shard, record) for shard, record in refs]
        return Batch(
            latents=torch.stack([s["latents"] for s in samples]),
            conditioning=Conditioning.stack([s["conditioning"] for s in samples]),
            bucket=refs[0][1]["bucket"],
            is_image=refs[0][1]["is_image"],
            keys=[record["key"] for _, record in refs],
            fps=torch.tensor([0.0 if s["meta"]["is_image"] else s["meta"]["fps"] for s in samples]),
            captions=[s["meta"]["caption"] for s in samples],
        )

    def read_sample(self, shard: str, record: dict) -> dict:
        """One sample; a shard cut short or a sample whose bytes do not decode is a DamagedShardError naming both."""
        try:
            members = {suffix: read_member(self.dir / shard, offset, size)
                       for suffix, (offset, size) in record["members"].items()}
            return decode_sample(members)
        except Exception as exc:  # OSError (short read), safetensors' / json's decode errors
            raise DamagedShardError(
                f"{self.dir / shard}: sample {record['key']} cannot be read ({type(exc).__name__}: {exc}); the shard "
                "is damaged (cut short or overwritten). Restore it, or pre-encode its videos again into a new "
                "folder; training resumes from the last checkpoint") from exc

    def sample_names(self, keys: list[str]) -> list[str]:
        """'<shard>/<key> (<source video>)' for sample keys of these shards: how errors name a sample."""
        names = []
        for key in keys:
            shard, record = self._find(key)
            source = json.loads(read_member(self.dir / shard, *record["members"]["json"])).get("source", "?")
            names.append(f"{shard}/{key} ({source})")
        return names

    def _find(self, key: str) -> SampleRef:
        """The shard and record of a sample key. Pre-encoding's keys are manifest positions and a shard holds a run
        of them, so the shard with the largest first key <= key holds it; keys of another form search every index."""
        first_keys = np.asarray(self.table.shards["first_key"])
        if key.isdigit() and len(first_keys) and (first_keys >= 0).all():
            order = np.argsort(first_keys, kind="stable")
            at = int(np.searchsorted(first_keys[order], int(key), side="right")) - 1
            found = [r for r in self._records_at(int(order[at])) if r["key"] == key] if at >= 0 else []
            if found:
                return self.shard_at(int(order[at])), found[0]
        return next(ref for ref in self.records() if ref[1]["key"] == key)

    def state_dict(self) -> dict:
        """The position, the settings and the dataset's identity: under 1 KB whatever the dataset's size."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "dp_rank": self.dp_rank,
                "dp_size": self.dp_size, "batch_size": self.batch_size, "image_fraction": self.image_fraction,
                "dataset": asdict(self.identity), "consumed": self.consumed, "epoch_start": self.epoch_start,
                "batch_schedule": [list(change) for change in self.batch_schedule]}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last batch the saved loader yielded; the settings must match, and so must the
        shards unless `allow_changed_shards` (then, warning, at the same epoch and batch of the new shards' plan).
        States saved before the O(1) identity (per-shard "index" fingerprints, or a "shards" name list) load too."""
        mine = self.state_dict()
        state = {"batch_schedule": [], **self._position_of_old(state), **state}  # saved before batch schedules
        for key in ("seed", "dp_rank", "dp_size", "batch_size", "image_fraction"):
            if state[key] != mine[key]:
                raise ConfigError(f"{key}: saved loader state has {state[key]!r}, {mine[key]!r} here; cannot resume "
                                  "exactly")
        passed = lambda schedule: [list(change) for change in schedule if change[0] < state["consumed"]]  # noqa: E731
        if passed(state["batch_schedule"]) != passed(self.batch_schedule):
            raise ConfigError(f"train.batch_schedule: the changes before batch {state['consumed']} were "
                              f"{passed(state['batch_schedule'])} in the saved run, {passed(self.batch_schedule)} here; "
                              "cannot resume exactly (later changes may differ)")
        change = self._change_since(state)
        if change is not None and not self.allow_changed_shards:
            raise ConfigError(
                f"data.shards {self.dir}: the shard index changed since the checkpoint: {change}; resuming would not "
                "continue its data order. Point data.shards at the checkpoint's shards, or set "
                "data.allow_changed_shards=true to go on with these from the same epoch and batch")
        if change is not None:
            log.warning("data.shards %s: the shard index changed since the checkpoint: %s; data.allow_changed_shards "
                        "is set, so going on at epoch %d, batch %d of the new index's order (not the saved run's)",
                        self.dir, change, state["epoch"], state["step"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.consumed, self.epoch_start = state["consumed"], state["epoch_start"]
        self._plan = None

    def _position_of_old(self, state: dict) -> dict:
        """For a state saved before batch schedules (no "consumed"): batches served and where its epoch began,
        counted from the epochs' plans at the one batch size it had (only when a schedule needs them)."""
        if "consumed" in state or not self.batch_schedule:
            return {"consumed": state.get("consumed", 0), "epoch_start": state.get("epoch_start", 0)}
        start = sum(len(self.epoch_plan(epoch, state["batch_size"])) for epoch in range(state["epoch"]))
        return {"consumed": start + state["step"], "epoch_start": start}

    def _change_since(self, state: dict) -> str | None:
        saved = saved_identity(state)
        if saved is not None:
            return saved.change(self.identity)
        names = set(state["shards"])  # the oldest states: shard names only
        now = {self.shard_at(p) for p in range(self.table.num_shards)}
        parts = [f"{len(diff)} shard(s) {what} ({_listed(sorted(diff))})"
                 for what, diff in (("added", now - names), ("removed", names - now)) if diff]
        return "; ".join(parts) or None


_DTYPES = {"i": np.int32, "q": np.int64}


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _shuffled(n: int, rng: random.Random) -> np.ndarray:
    """range(n) in the order `rng.shuffle` puts any n items in (its draws depend only on n); 8 bytes an item."""
    order = array("q", range(n))
    rng.shuffle(order)
    return np.frombuffer(order, dtype=np.int64)


def shard_id(name: str) -> int:
    """`shards.shard_name`'s inverse: "shard-000012.tar" -> 12."""
    return int(name[len("shard-"): -len(".tar")])
