"""Pre-encoding's bookkeeping at scale (issue 35): how long a rank takes to reach its first sample, fresh and when
resuming a folder 10% or 50% done, and its peak RSS as one of 1,000 ranks, for manifests of n entries.

Synthetic input, no decoder stand-in: every manifest entry points at the same 64x64 PNG (`workdir/tiny.png`)
with a caption of its own, so no entry repeats another and each is really probed, decoded, hashed and encoded
(toy encoders, `models/toy_encoders.py`) by the project's own code; only the manifest's length grows. A run is
stopped (by its `on_prepared` hook) at its first decoded sample: what is timed is everything before it, i.e. the
manifest read, the run's identity (hash), the repeat check, the shard plan and the listing of the output (best of
two runs, after a warm-up run on a 20-entry manifest).
A resumed folder: one fresh run writes shard 0 for real; its files stand in for the first 10% (then 50%) of the
shards (copies under their names, each with its index), as a killed run leaves them.

Rows (n = manifest entries, shard size 10):
  "pre-encode: time to first sample (fresh)"     s, rank 0 of 1 (one process writes every shard)
  "pre-encode: resume at 10%" / "... at 50%"     s, the same, into a folder with the first 10% / 50% of shards done
  "pre-encode: resume at 50% / fresh"            x, target <= 1.1 (issue 35)
  "pre-encode: resume, rank 1 of 1,000, ..."     s, rank 1 of 1,000 to its first sample in the 50% folder, its shard
                                                 missing: with the manifest index rank 0 wrote, and without it
  "pre-encode: peak RSS per rank"                MB, VmHWM of rank 0 of 1,000 (a forked process) to its first sample
  "pre-encode: peak RSS growth per rank"         MB, the same less its RSS before `run` (torch, encoders built)

`rows` takes about 2 s at 1k once the package is imported; 1k, 10k and 100k together about 75 s, 1M alone
about 4 min 40 s on this repository's 2 shared cores (most of it the 1M-line manifest, the 50,000 stand-in
shards and the runs' passes over the manifest, each run 20-40 s):

    PYTHONPATH=. python benchmarks/scale_preencode.py --sizes 1000 10000 --workdir /tmp/scale_preencode
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import time
from pathlib import Path

import torch

SHARD_SIZE = 10
RANKS = 1_000  # simulated: the RSS row is rank 0 of this many
TRIES = 2  # each time is the best of this many runs (the machine is shared)


class _FirstSample(Exception):
    """Raised by `on_prepared` to stop a run at a chosen sample."""


def rows(sizes: list[int], workdir: Path) -> list[dict]:
    torch.set_num_threads(1)  # one core per rank here
    workdir.mkdir(parents=True, exist_ok=True)
    image = tiny_image(workdir / "tiny.png")
    manifests = {n: write_manifest(workdir / f"manifest-{n}.jsonl", n, image) for n in sizes}
    # RSS first, forked from a process that has run nothing: no freed memory for a rank to grow into unseen
    memory = {n: peak_rss_mb(manifests[n], workdir / f"rank0-{n}") for n in sizes}
    fresh_run(write_manifest(workdir / "manifest-warm-up.jsonl", 2 * SHARD_SIZE, image), workdir / "warm-up")
    out = []
    for n, manifest in manifests.items():
        fresh = min(fresh_run(manifest, workdir / f"fresh-{n}") for _ in range(TRIES))
        resumed = workdir / f"resumed-{n}"
        shutil.rmtree(resumed, ignore_errors=True)
        shutil.copytree(workdir / f"fresh-{n}", resumed)
        times = {}
        for fraction in (0.1, 0.5):
            stand_in_shards(resumed, int(fraction * -(-n // SHARD_SIZE)))
            times[fraction] = min(time_to_sample(manifest, resumed) for _ in range(TRIES))
        ranked = {indexed: min(rank_time_to_sample(manifest, resumed, indexed) for _ in range(TRIES))
                  for indexed in (False, True)}
        out += [row("pre-encode: time to first sample (fresh)", n, fresh, "s"),
                row("pre-encode: resume at 10%", n, times[0.1], "s"),
                row("pre-encode: resume at 50%", n, times[0.5], "s"),
                row("pre-encode: resume at 50% / fresh", n, times[0.5] / fresh, "x"),
                row(f"pre-encode: resume, rank 1 of {RANKS:,}, manifest read whole", n, ranked[False], "s"),
                row(f"pre-encode: resume, rank 1 of {RANKS:,}, manifest index", n, ranked[True], "s"),
                row("pre-encode: peak RSS per rank", n, memory[n][0], "MB"),
                row("pre-encode: peak RSS growth per rank", n, memory[n][1], "MB")]
    return out


def row(what: str, n: int, value: float, unit: str) -> dict:
    return {"what": what, "n": n, "value": round(value, 4), "unit": unit, "reference": None}


def tiny_image(path: Path) -> Path:
    if not path.exists():
        import numpy as np
        from PIL import Image

        Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8)).save(path)
    return path


def write_manifest(path: Path, n: int, image: Path) -> Path:
    """n entries, all the same image, each its own caption (so none repeats another)."""
    if not path.exists():
        from megatron_moviegen.utils.io import atomic_write_text

        atomic_write_text(path, "".join(json.dumps({"path": image.name, "caption": f"sample {i} of a tiny image"})
                                        + "\n" for i in range(n)))
    return path


def preencoder(out: Path, rank: int = 0, world_size: int = 1, stop_at: int = 1):
    from megatron_moviegen.config.schema import build
    from megatron_moviegen.data.config import DataConfig
    from megatron_moviegen.data.preencode import Preencoder
    from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
    from megatron_moviegen.recipes import load_config

    def stop(count: int) -> None:
        if count == stop_at:
            raise _FirstSample()

    config = build(DataConfig, {"buckets": {"resolution": 64, "aspect_ratios": ["1:1"], "durations_s": [2.0]},
                                "shard_size": SHARD_SIZE, "encode_batch_size": 2, "num_workers": 0})
    return Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), out,
                      rank=rank, world_size=world_size, on_prepared=stop)


def start(encoder, manifest: Path) -> None:
    """What `tools/preencode_latents.py` does with a manifest: this rank's entries, streamed."""
    from megatron_moviegen.data.manifest import ManifestFile

    encoder.run(ManifestFile(manifest))


def fresh_run(manifest: Path, out: Path) -> float:
    """`time_to_sample` into an empty `out`, going on to write shard 0."""
    shutil.rmtree(out, ignore_errors=True)
    return time_to_sample(manifest, out, stop_at=SHARD_SIZE + 1)


def time_to_sample(manifest: Path, out: Path, stop_at: int = 1) -> float:
    """Seconds from `run` to the first decoded sample (the run goes on to sample `stop_at`, then stops)."""
    encoder = preencoder(out, stop_at=stop_at)
    first = []
    stop = encoder.on_prepared

    def note_first(count: int) -> None:
        if count == 1:
            first.append(time.perf_counter())
        stop(count)

    encoder.on_prepared = note_first
    begin = time.perf_counter()
    try:
        start(encoder, manifest)
    except _FirstSample:
        return first[0] - begin
    raise RuntimeError(f"{out}: the run ended before sample {stop_at}; is the manifest shorter than a shard?")


def rank_time_to_sample(manifest: Path, resumed: Path, indexed: bool) -> float:
    """`time_to_sample` of rank 1 of RANKS rerun into a copy of `resumed` (its shard 1 not yet written), with the
    manifest index rank 0 left there (`data/manifest_index.py`) or without it."""
    from megatron_moviegen.data.manifest_index import INDEX_DIR as MANIFEST_INDEX
    from megatron_moviegen.data.shards import INDEX_DIR, shard_name

    out = resumed.with_name(resumed.name + "-rank1")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(resumed, out, ignore=shutil.ignore_patterns(shard_name(1), f"{shard_name(1)}.json"))
    if not indexed:
        shutil.rmtree(out / INDEX_DIR / MANIFEST_INDEX)
    encoder = preencoder(out, rank=1, world_size=RANKS)
    encoder.config.manifest_index_wait_s = 0.0  # without the index: read it whole, not wait for a rank 0
    begin = time.perf_counter()
    try:
        start(encoder, manifest)
    except _FirstSample:
        return time.perf_counter() - begin
    raise RuntimeError(f"{out}: rank 1 of {RANKS} wrote no sample")


def stand_in_shards(out: Path, count: int) -> None:
    """Shards 1..count-1 made complete with copies of shard 0's tar and index (written in that order, as
    `write_shard` does)."""
    from megatron_moviegen.data.shards import INDEX_DIR, ShardIndex, shard_name
    from megatron_moviegen.utils.io import atomic_write_text

    first = ShardIndex.read(out / INDEX_DIR / f"{shard_name(0)}.json")
    for k in range(1, count):
        index = out / INDEX_DIR / f"{shard_name(k)}.json"
        if index.exists():
            continue
        shutil.copyfile(out / shard_name(0), out / shard_name(k))
        atomic_write_text(index, json.dumps({**first.__dict__, "shard": shard_name(k)}))


def peak_rss_mb(manifest: Path, out: Path) -> tuple[float, float]:
    """(peak RSS, its growth over the RSS at the start) in MB of rank 0 of RANKS running up to its first sample,
    in a forked process whose peak was reset (/proc/self/clear_refs). Memory this process freed could be reused
    unseen by the rank: `rows` measures before running anything, and frees what it can first (gc, malloc_trim).
    Pre-issue code at 100k measured 94 MB of growth so from a clean parent, 93 MB in a new interpreter
    (`--rss-of`), but 61-85 MB after runs in the parent."""
    shutil.rmtree(out, ignore_errors=True)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        status = 1
        try:
            Path("/proc/self/clear_refs").write_text("5")
            os.write(write, json.dumps(rank_rss_kb(manifest, out)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status or not answer:
        raise RuntimeError(f"the forked rank measuring RSS for {manifest} failed (wait status {status})")
    peak, before = json.loads(answer)
    return peak / 1024, (peak - before) / 1024


def rank_rss_kb(manifest: Path, out: Path) -> list[int]:
    """[VmHWM, VmRSS before `run`] in kB of this process as rank 0 of RANKS, run up to its first sample."""
    torch.set_num_threads(1)
    encoder = preencoder(out, rank=0, world_size=RANKS)
    before = _status_kb("VmRSS")
    try:
        start(encoder, manifest)
    except _FirstSample:
        pass
    return [_status_kb("VmHWM"), before]


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=Path("outputs/scale_preencode"))
    parser.add_argument("--rss-of", type=Path, nargs=2, metavar=("MANIFEST", "OUT"),
                        help="only [peak RSS, RSS before run] in kB of rank 0 of 1,000, in this process")
    args = parser.parse_args()
    if args.rss_of:
        print(json.dumps(rank_rss_kb(*args.rss_of)))
        return
    for result in rows(args.sizes, args.workdir):
        print(json.dumps(result))


if __name__ == "__main__":
    main()
