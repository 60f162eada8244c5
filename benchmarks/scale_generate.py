"""Peak memory of `generate`'s decode + write against video length (issue 35 item 6), for benchmarks/scale.py.

One row, "generate: decode+write peak memory": the TAE decode of random latents streamed chunk by chunk into the
H.264 writer, exactly as `MovieGenPipeline.generate` writes a video (`decode_chunks` -> `write_media`), with the
tiny TAE (configs/tae/tae_tiny.yaml, random weights) at 64 x 64 px. Its `n` is the number of frames, not manifest
entries: the row ignores the driver's sizes and measures 32, 128, 512 and 2,048 frames, or only 32 when
the driver's largest size is under 10,000 (the CI smoke at 1k, measured in this process by MemoryMeter's RSS
sampling, to spare a process start). The value is the peak growth over the region
(benchmarks/isolated.py: each length alone in a fresh spawned process, its peak resident set size during the
decode + write minus its RSS just before, after a one-latent warm-up). Target: flat in the frame count.

Time (2 shared CPU cores, 1 thread): ~1 s for the smoke; ~30 s for all four lengths, whatever the sizes
(1M included), the TAE decode of 2,048 frames being ~24 s of it.

    PYTHONPATH=. python benchmarks/scale_generate.py [--frames 32 128 512 2048]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.isolated import measure_isolated
from megatron_moviegen.inference.components import tiny_tae
from megatron_moviegen.inference.pipeline import decode_chunks
from megatron_moviegen.utils.video_io import write_media

FRAMES = (32, 128, 512, 2048)
SMOKE_FRAMES = (32,)
SIZE = 64  # pixels, square
ROW = "generate: decode+write peak memory"


def _case(num_frames: int, path: Path):
    """Setup in the child: the tiny TAE, random latents for `num_frames` at SIZE px, a warm-up; the work decodes
    and writes them as .mp4 at `path`, as `generate` does. The warm-up (one latent frame) allocates the
    libraries' first-call state, not a whole tile's activations, which the measure keeps."""
    torch.set_num_threads(1)
    tae = tiny_tae().eval()
    latents = torch.randn(1, tae.cfg.latent_channels, tae.latent_frames(num_frames), SIZE // tae.cfg.compression,
                          SIZE // tae.cfg.compression, generator=torch.Generator().manual_seed(0))
    write_media(path.with_suffix(".warmup.mp4"), (c[0] for c in decode_chunks(tae, latents[:, :, :1], 8)), fps=16)
    return lambda: write_media(path, (chunk[0] for chunk in decode_chunks(tae, latents, num_frames)), fps=16)


def decode_and_write_peak(num_frames: int, path: Path, isolated: bool = True) -> float:
    """Peak memory growth in MB of decoding `num_frames` at SIZE px and writing them to `path`: alone in a spawned
    process, or (`isolated` False, seconds faster) in this one, sampled by MemoryMeter."""
    if isolated:
        return measure_isolated(_case, num_frames, path)[1] * 2**20 / 1e6
    from benchmarks.dit_throughput import MemoryMeter

    work = _case(num_frames, path)
    with MemoryMeter() as meter:
        work()
    return meter.transient / 1e6


def rows(sizes: list[int], workdir: Path) -> list[dict]:
    """The row at each frame count (see the module docstring for which), videos written under `workdir`."""
    full = max(sizes) >= 10_000
    return [{"what": ROW, "n": n, "value": decode_and_write_peak(n, workdir / f"video-{n}.mp4", isolated=full),
             "unit": "MB", "reference": None} for n in (FRAMES if full else SMOKE_FRAMES)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=list(FRAMES))
    args = parser.parse_args()
    print(f"tae_tiny decode+write, {SIZE}x{SIZE} px, 1 thread; peak = max RSS during the work - RSS before it")
    print(f"{'frames':>6} | {'video MB (fp32)':>15} | {'peak MB':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.frames:
            peak = decode_and_write_peak(n, Path(folder) / f"video-{n}.mp4")
            print(f"{n:>6} | {3 * n * SIZE**2 * 4 / 1e6:>15.1f} | {peak:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
