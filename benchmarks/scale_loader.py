"""Issue 35, items 3 and 4: finalisation of pre-encoded shards and the training loader's start-up, at n samples.

    PYTHONPATH=. python benchmarks/scale.py --parts loader --sizes 1000 10000 100000

Rows (each case in a fresh spawned process, `isolated.measure_isolated`: peak RSS is the growth over the process's
RSS before the work):
  finalise: time / peak RSS          `preencode.finalize` over every shard index (energon's `prepare_dataset`
                                     on the same shards, one worker as `finalize` runs it, as reference)
  loader: start-up time / RSS, dp D  one rank's `LatentLoader` (rank 0 of D simulated ranks) up to its first batch
                                     (energon: `get_train_dataset` + `get_loader` + as many samples, rank 0 of D,
                                     no shuffle buffer, cooked to their JSON member)
  loader: state size per rank, dp D  bytes of the pickled `loader.state_dict()`, what a checkpoint's
                                     rank_state/dpNNNNN.pt holds (torch.save's zip container adds a fixed 1.26 KB)

Shards are synthetic (tiny latents and embeddings, three buckets), written with `shards.write_shard`; nothing is
decoded or encoded. Shard size is min(64, n // 1000) samples so that dp 1000 always has a shard per rank (1k and
10k: 1,000 shards; 100k: 1,563; 1M: 15,625). Writing the shards dominates: on the 2-core CI-like machine,
shared with tests, 1k took 75 s in all, most of it the seven spawned processes' imports of torch (a forked child
measured memory differently, so cases stay spawned), and 100k ~5 min (50-108 s of it writing shards, energon's
preparation 26 s); 1M has not been run.
"""

from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from isolated import measure_isolated  # noqa: E402

BUCKETS = (("16x16x16", False), ("32x16x16", False), ("64x16x32", False))  # (bucket, is_image)
DP_SIZES = (1, 1000)
BATCH_SIZE = 1  # dp 1000 at 1k: one sample per rank


def shard_size(n: int) -> int:
    return max(1, min(64, n // 1000))


def write_synthetic_shards(out: Path, n: int) -> int:
    """n tiny samples in shards of `shard_size(n)`, index files included, not finalised; the number of shards."""
    from megatron_moviegen.conditioning import Conditioning, Tokens
    from megatron_moviegen.data.shards import EncodedSample, sample_key, write_shard

    out.mkdir(parents=True, exist_ok=True)
    latents = torch.zeros(16, 1, 1, 1)
    conditioning = Conditioning({"ul2": Tokens(torch.zeros(2, 4), torch.tensor([True, False]))})
    size = shard_size(n)
    shards = (n + size - 1) // size
    for k in range(shards):
        samples = []
        for index in range(k * size, min(n, (k + 1) * size)):
            bucket, is_image = BUCKETS[index % len(BUCKETS)]
            samples.append(EncodedSample(sample_key(index), latents, conditioning, {
                "bucket": bucket, "is_image": is_image, "fps": 0.0 if is_image else 24.0,
                "prompt_fps": None if is_image else 24, "num_frames": 1, "caption": f"sample {index}"}))
        write_shard(out, k, samples, [{"path": f"missing-{k}.mp4", "index": -1, "reason": "synthetic", "kind": "io"}],
                    torch.bfloat16)
    return shards


def _finalize_case(out: str, shards: int):
    from megatron_moviegen.data.preencode import finalize

    return lambda: finalize(Path(out), shards, workers=1, energon_index=False)  # energon's preparation: the reference


def _energon_prepare_case(out: str):
    import contextlib
    import os

    from megatron.energon.flavors.webdataset.base_webdataset import BaseWebdatasetFactory

    names = sorted(p.name for p in Path(out).glob("shard-*.tar"))

    def work():
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            BaseWebdatasetFactory.prepare_dataset(Path(out), names, split_parts_patterns=[("train", ".*")],
                                                  shuffle_seed=None, workers=1)
    return work


def _loader_case(out: str, dp_size: int):
    from megatron_moviegen.data.loader import LatentLoader

    def work():
        loader = LatentLoader(out, BATCH_SIZE, 0.0, seed=0, dp_rank=0, dp_size=dp_size)
        next(iter(loader))
    return work


def _energon_loader_case(out: str, dp_size: int):
    from megatron.energon import WorkerConfig, get_loader, get_train_dataset

    def work():
        config = WorkerConfig(rank=0, world_size=dp_size, num_workers=0)
        dataset = get_train_dataset(out, batch_size=None, worker_config=config, shuffle_buffer_size=None,
                                    max_samples_per_sequence=None, task_encoder=_energon_encoder())
        samples = iter(get_loader(dataset))
        for _ in range(BATCH_SIZE):
            next(samples)
    return work


def _energon_encoder():
    """A task encoder that cooks each crude sample into one holding its JSON member (energon reads the tar)."""
    import dataclasses

    from megatron.energon import Cooker, DefaultTaskEncoder, Sample, stateless

    @dataclasses.dataclass
    class Raw(Sample):
        json: bytes

    @stateless
    def cook(crude):
        return Raw(__key__=crude["__key__"], __restore_key__=crude["__restore_key__"],
                   __subflavors__=crude.get("__subflavors__"), __sources__=crude.get("__sources__"), json=crude["json"])

    class Encoder(DefaultTaskEncoder):
        cookers = [Cooker(cook)]

    return Encoder()


def _state_size(out: str, dp_size: int) -> int:
    from megatron_moviegen.data.loader import LatentLoader

    loader = LatentLoader(out, BATCH_SIZE, 0.0, seed=0, dp_rank=0, dp_size=dp_size)
    next(iter(loader))
    return len(pickle.dumps(loader.state_dict()))


def _energon_or_none(case, *args) -> tuple[float | None, float | None]:
    try:
        return measure_isolated(case, *args)
    except Exception as exc:  # energon missing, or it cannot read these shards: no reference
        print(f"scale_loader: energon reference skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None, None


def rows(sizes: list[int], workdir: Path) -> list[dict]:
    out_rows = []
    for n in sizes:
        out = workdir / f"shards_{n}"
        started = time.perf_counter()
        shards = write_synthetic_shards(out, n)
        print(f"scale_loader: {n:,} samples in {shards:,} shards written in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
        seconds, mib = measure_isolated(_finalize_case, str(out), shards)
        ref_s, ref_mib = _energon_or_none(_energon_prepare_case, str(out))
        out_rows += [{"what": "finalise: time", "n": n, "value": seconds, "unit": "s", "reference": ref_s},
                     {"what": "finalise: peak RSS", "n": n, "value": mib, "unit": "MB", "reference": ref_mib}]
        for dp in DP_SIZES:
            seconds, mib = measure_isolated(_loader_case, str(out), dp)
            ref_s, ref_mib = _energon_or_none(_energon_loader_case, str(out), dp)
            out_rows += [
                {"what": f"loader: start-up time, dp {dp}", "n": n, "value": seconds, "unit": "s", "reference": ref_s},
                {"what": f"loader: start-up RSS, dp {dp}", "n": n, "value": mib, "unit": "MB", "reference": ref_mib},
                {"what": f"loader: state size per rank, dp {dp}", "n": n, "value": float(_state_size(str(out), dp)),
                 "unit": "B", "reference": None},
            ]
    return out_rows
