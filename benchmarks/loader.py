"""Does the training loader keep up? Batches/s of the loader alone against the tiny DiT's step time, and the time the
training loop waits for data with and without read-ahead (`data.prefetch_batches`).

Shards: the four bundled clips pre-encoded with the toy encoders at 64 px (as the tests do), into --out (reused when
there). Training: `pretrain` of the `tiny` recipe on one gloo process, --steps steps of one 2-sample batch; the first
3 steps (warm-up) are left out of the means. `data_s` is the time `next(batch)` took inside each step.

    PYTHONPATH=. python benchmarks/loader.py [--steps 40] [--out outputs/bench_loader]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

BUCKETS = {"resolution": 64, "aspect_ratios": ["1:1", "16:9"], "durations_s": [2.0], "max_upscale": 2.0,
           "include_images": False}


def make_shards(out: Path) -> Path:
    from megatron_moviegen.config.schema import build
    from megatron_moviegen.data.bundled import CAPTIONS, bundled_clips_dir
    from megatron_moviegen.data.config import DataConfig
    from megatron_moviegen.data.manifest import read_manifest
    from megatron_moviegen.data.preencode import Preencoder
    from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.utils.io import atomic_write_text

    shards = out / "shards"
    if (shards / ".nv-meta" / ".info.json").exists():
        return shards
    manifest = out / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps({"path": str(bundled_clips_dir() / name), "caption": caption})
                                        + "\n" for name, caption in CAPTIONS.items()))
    config = build(DataConfig, {"buckets": BUCKETS, "shard_size": 1, "num_workers": 0, "image_fraction": 0.0})
    Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), shards).run(
        read_manifest(manifest))
    return shards


def loader_alone(shards: Path, batches: int) -> float:
    """Batches/s of LatentLoader reading and decoding 2-sample batches, synchronously."""
    from megatron_moviegen.data.loader import LatentLoader

    data = iter(LatentLoader(shards, batch_size=2, image_fraction=0.0, seed=0))
    next(data)
    start = time.perf_counter()
    for _ in range(batches):
        next(data)
    return batches / (time.perf_counter() - start)


def train(shards: Path, out: Path, steps: int, prefetch: int) -> tuple[float, float]:
    """Mean step time and mean data wait (seconds) of the tiny DiT's training, after 3 warm-up steps."""
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.training.pretrain import pretrain

    cfg = load_config("tiny", [f"data.shards={shards}", f"train.checkpoint_dir={out / f'ckpt_prefetch{prefetch}'}",
                               f"train.steps={steps}", "train.global_batch_size=2", "train.save_every=100000",
                               "train.overwrite=true", "train.resume=false", "train.progress_bar=false",
                               "train.log_every=100000", "data.image_fraction=0.0",
                               f"data.prefetch_batches={prefetch}"])
    rows = pretrain(cfg).history[3:]
    return (sum(r["step_s"] for r in rows) / len(rows), sum(r["data_s"] for r in rows) / len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default="outputs/bench_loader")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    shards = make_shards(out)
    rate = loader_alone(shards, 20)
    results = {prefetch: train(shards, out, args.steps, prefetch) for prefetch in (0, 2)}
    dist.destroy_process_group()
    print(f"tiny DiT, one gloo process, {torch.get_num_threads()} threads, 2-sample batches of 64 px clips "
          f"(32 frames, 60 tokens each)")
    print(f"loader alone: {rate:.1f} batches/s ({1000 / rate:.1f} ms a batch)")
    print(f"{'data.prefetch_batches':>22} | {'step ms':>8} | {'waiting for data ms':>20} | {'share':>6}")
    for prefetch, (step, wait) in results.items():
        print(f"{prefetch:>22} | {step * 1000:>8.1f} | {wait * 1000:>20.2f} | {wait / step:>6.1%}")


if __name__ == "__main__":
    main()
