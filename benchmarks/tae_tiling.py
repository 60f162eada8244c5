"""Peak memory and time of tiled vs untiled TAE decode on CPU (tae_tiny, 32x32 px, 32..256 frames).

Memory is the process's peak resident set size (getrusage ru_maxrss) during the decode minus the RSS just
before it; each case runs in a fresh spawned process so the peak belongs to that case alone. "tiled" keeps
the full output video; "streamed" consumes decode_tiles() chunk by chunk (what a video writer would do).

    PYTHONPATH=. python benchmarks/tae_tiling.py [--frames 32 64 128 256] [--size 32]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.isolated import measure_isolated


def _case(frames: int, size: int, mode: str):
    from megatron_moviegen.models.tae import TAE
    from megatron_moviegen.training.train_tae import load_tae_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tae = TAE(load_tae_config("tae_tiny").model).eval()
    latents = torch.randn(1, 16, frames // 8, size // 8, size // 8)
    with torch.no_grad():
        tae.decode(latents[:, :, :1], num_frames=1)  # warm-up

    @torch.no_grad()
    def decode() -> None:
        if mode == "streamed":
            for _chunk in tae.decode_tiles(latents, frames):
                pass
        else:
            tae.decode(latents, tiled=mode == "tiled")

    return decode


def measure(frames: int, size: int, mode: str) -> tuple[float, float]:
    return measure_isolated(_case, frames, size, mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    output_mib = {f: 3 * f * args.size**2 * 4 / 2**20 for f in args.frames}
    print(f"tae_tiny decode on CPU, 1 thread, {args.size}x{args.size} px; peak = max RSS during decode - RSS before")
    print(f"{'frames':>6} | {'output MiB':>10} | {'untiled s':>9} {'peak MiB':>8} | {'tiled s':>7} {'peak MiB':>8} | "
          f"{'streamed s':>10} {'peak MiB':>8}")
    for frames in args.frames:
        row = [measure(frames, args.size, mode) for mode in ("untiled", "tiled", "streamed")]
        cells = " | ".join(f"{s:>{w}.2f} {m:>8.1f}" for (s, m), w in zip(row, (9, 7, 10)))
        print(f"{frames:>6} | {output_mib[frames]:>10.1f} | {cells}", flush=True)


if __name__ == "__main__":
    main()
