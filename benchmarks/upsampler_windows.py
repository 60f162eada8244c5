"""Peak memory of the upsampler's sampling vs video length on CPU: sliding windows (2 latent frames, overlap 1)
against one window over the whole clip. upsampler_tiny's DiT (random weights), --size px frames, 2 Euler steps.

Memory is the process's peak resident set size (getrusage ru_maxrss) during sampling minus the RSS just before
it (after a one-window warm-up); each case runs in a fresh spawned process so the peak belongs to it alone. The
latents themselves (b, 16, T, h, w) grow with T in both cases; the model's activations grow only without windows.

    PYTHONPATH=. python benchmarks/upsampler_windows.py [--latent-frames 2 4 8 16] [--size 256]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.isolated import measure_isolated


def _case(latent_frames: int, size: int, windowed: bool):
    from megatron_moviegen.inference.components import tiny_tae
    from megatron_moviegen.inference.upsampler import SpatialUpsampler, UpsamplingConfig
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime

    torch.set_num_threads(1)
    k = size // 16
    cfg = load_config("upsampler_tiny", [f"model.max_frames={max(latent_frames, 2)}", f"model.max_height={k}",
                                         f"model.max_width={k}", "model.max_video_tokens=10000000"])
    runtime = Runtime.resolve(distributed_optimizer=False)
    init_model_parallel(cfg.parallel, runtime)
    torch.manual_seed(0)
    upsampler = SpatialUpsampler(build_dit_chunks(cfg, runtime)[0].eval(), tiny_tae())
    condition = torch.randn(1, 16, latent_frames, size // 8, size // 8)
    window = 2 if windowed else latent_frames
    settings = UpsamplingConfig(window_frames=window, overlap_frames=min(1, window - 1), steps=2)
    upsampler.sample_latents(condition[:, :, :2], UpsamplingConfig(window_frames=2, steps=1))  # warm-up
    return lambda: upsampler.sample_latents(condition, settings)


def measure(latent_frames: int, size: int, windowed: bool) -> tuple[float, float]:
    return measure_isolated(_case, latent_frames, size, windowed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent-frames", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    tokens = (args.size // 16) ** 2
    print(f"upsampler_tiny sampling on CPU, 1 thread, {args.size}x{args.size} px ({tokens} tokens per latent frame), "
          "2 Euler steps; peak = max RSS during sampling - RSS before")
    print(f"{'latent frames':>13} {'~frames':>7} | {'windows 2/1 s':>13} {'peak MiB':>8} | "
          f"{'one window s':>12} {'peak MiB':>8}")
    for frames in args.latent_frames:
        (ws, wm), (os_, om) = measure(frames, args.size, True), measure(frames, args.size, False)
        print(f"{frames:>13} {8 * frames:>7} | {ws:>13.2f} {wm:>8.1f} | {os_:>12.2f} {om:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
