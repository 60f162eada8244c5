"""Training batches from pre-encoded latent shards: one bucket per batch, a fixed image:video batch ratio,
shards split over data-parallel ranks, deterministic for a seed, and resumable from `state_dict()`.

Reads the shards with its own random-access tar reader over `index/<shard>.json` (member byte offsets
written by pre-encoding), not through megatron-energon: bucket grouping and the image:video ratio are
planned from that index without opening a sample, and the position is just (epoch, batch) so a restore is
exact and costs nothing. The same shards are a valid energon CrudeWebdataset for other tools.

Epoch e: shards are shuffled with (seed, e) and dealt round-robin to ranks; each rank shuffles its samples,
cuts each bucket into batches (a bucket's incomplete last batch waits for the next epoch), shuffles image and
video batches, and interleaves them so that the first k batches hold floor(k * image_fraction) image batches.
The epoch ends when the kind due next runs out.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.utils.io import read_json_file
from megatron_moviegen.data.shards import INDEX_DIR, META_DIR, ShardIndex, decode_sample, read_member


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


class LatentLoader:
    """An endless iterator of `Batch`es for one data-parallel rank."""

    def __init__(self, shards_dir: str | Path, batch_size: int, image_fraction: float, seed: int,
                 dp_rank: int = 0, dp_size: int = 1):
        if not 0 <= dp_rank < dp_size:
            raise ConfigError(f"dp_rank: got {dp_rank}, must be in [0, dp_size={dp_size})")
        self.dir = Path(shards_dir)
        self.batch_size, self.image_fraction, self.seed = batch_size, image_fraction, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.shards = self._read_indexes()
        if len(self.shards) < dp_size:
            raise ConfigError(f"{self.dir}: {len(self.shards)} shards cannot be split over {dp_size} data-parallel ranks")
        self.epoch, self.step = 0, 0
        self._plan: tuple[int, list[list[SampleRef]]] | None = None

    def _read_indexes(self) -> dict[str, list[dict]]:
        info_path = self.dir / META_DIR / ".info.json"
        if not info_path.exists():
            raise FileNotFoundError(f"{self.dir}: no {META_DIR}/.info.json; pre-encoding has not finished here")
        names = sorted(read_json_file(info_path, "energon shard list")["shard_counts"])
        return {name: ShardIndex.read(self.dir / INDEX_DIR / f"{name}.json").samples for name in names}

    def prompt_fps(self) -> list[int]:
        """The FPS-n prefix values of every video in the shards (all ranks' shards), ascending."""
        return sorted({r["prompt_fps"] for records in self.shards.values() for r in records
                       if r.get("prompt_fps") is not None})

    def epoch_plan(self, epoch: int) -> list[list[SampleRef]]:
        """This rank's batches for `epoch`, as lists of sample references (nothing is read)."""
        rng = random.Random(f"{self.seed}/{epoch}")
        shards = sorted(self.shards)
        rng.shuffle(shards)
        samples = [(shard, record) for shard in shards[self.dp_rank :: self.dp_size] for record in self.shards[shard]]
        rng.shuffle(samples)
        by_bucket: dict[str, list[SampleRef]] = {}
        for ref in samples:
            by_bucket.setdefault(ref[1]["bucket"], []).append(ref)
        images, videos = [], []
        for bucket in sorted(by_bucket):
            refs = by_bucket[bucket]
            full = len(refs) - len(refs) % self.batch_size
            batches = [refs[i : i + self.batch_size] for i in range(0, full, self.batch_size)]
            (images if refs[0][1]["is_image"] else videos).extend(batches)
        rng.shuffle(images)
        rng.shuffle(videos)
        plan = self._interleave(images, videos)
        if not plan:
            raise ValueError(
                f"rank {self.dp_rank}: epoch {epoch} has no batches ({len(images)} image and {len(videos)} video "
                f"batches of {self.batch_size}, image_fraction {self.image_fraction})"
            )
        return plan

    def _interleave(self, images: list, videos: list) -> list:
        plan, used = [], {True: 0, False: 0}
        for k in range(len(images) + len(videos)):
            want_image = math.floor((k + 1) * self.image_fraction) > math.floor(k * self.image_fraction)
            source = images if want_image else videos
            if used[want_image] == len(source):
                break
            plan.append(source[used[want_image]])
            used[want_image] += 1
        return plan

    def __iter__(self) -> Iterator[Batch]:
        while True:
            plan = self._plan_for(self.epoch)
            while self.step < len(plan):
                refs = plan[self.step]
                self.step += 1
                yield self.read_batch(refs)
            self.epoch, self.step = self.epoch + 1, 0

    def _plan_for(self, epoch: int) -> list[list[SampleRef]]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.epoch_plan(epoch))
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
            shard, record = next((s, r) for s, records in self.shards.items() for r in records if r["key"] == key)
            source = json.loads(read_member(self.dir / shard, *record["members"]["json"])).get("source", "?")
            names.append(f"{shard}/{key} ({source})")
        return names

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "dp_rank": self.dp_rank,
                "dp_size": self.dp_size, "batch_size": self.batch_size, "image_fraction": self.image_fraction,
                "shards": sorted(self.shards)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly after the last batch the saved loader yielded; the data and settings must match."""
        mine = self.state_dict()
        for key in ("seed", "dp_rank", "dp_size", "batch_size", "image_fraction", "shards"):
            if state[key] != mine[key]:
                shown = f"{len(state[key])} shards vs {len(mine[key])}" if key == "shards" else f"{state[key]!r} vs {mine[key]!r}"
                raise ConfigError(f"{key}: saved loader state has {shown} here; cannot resume exactly")
        self.epoch, self.step = state["epoch"], state["step"]
