"""Upsample an existing video with a spatial-upsampler export: `python tools/upsample.py VIDEO` (or
`python -m megatron_moviegen.upsample`).

    python tools/upsample.py low_768.mp4 --checkpoint runs/upsampler_export --tae runs/tae --height 1072 --width 1920
    # measure on a clip taken as the truth: downscale it 2x, upsample it back, PSNR against it and against bilinear
    python tools/upsample.py clip.mp4 --checkpoint ... --tae ... --height 64 --width 64 --evaluate 2.0

The video is decoded at --fps (default 24, the upsampler's training rate), --frames frames from --start. Windows
are over latent frames (inference/upsampler.py). Rank 0 writes the .mp4 and a .json sidecar.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_moviegen.checkpoints.export import check_export_folder, load_exported_dit
from megatron_moviegen.data.config import UpsampleConfig
from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder, to_unit_range
from megatron_moviegen.inference.components import TOY_TEXT_ENCODERS, load_tae, load_text_encoders
from megatron_moviegen.inference.pipeline import command_record, record_digest
from megatron_moviegen.inference.upsampler import SpatialUpsampler, UpsamplingConfig, evaluate_upsampling
from megatron_moviegen.parallel.initialize import torn_down_after
from megatron_moviegen.runtime import Runtime, add_precision_argument
from megatron_moviegen.utils import cli
from megatron_moviegen.utils.video_io import write_json, write_video

DEFAULTS = UpsamplingConfig()


def add_sampling_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The UpsamplingConfig flags (shared with `generate --upsample`)."""
    parser.add_argument(f"--{prefix}window-frames", type=int, default=DEFAULTS.window_frames,
                        help="latent frames per window (2 = the paper's 14 frames)")
    parser.add_argument(f"--{prefix}overlap-frames", type=int, default=DEFAULTS.overlap_frames,
                        help="latent frames shared by neighbouring windows")
    parser.add_argument(f"--{prefix}steps", type=int, default=DEFAULTS.steps, help="Euler steps (paper: ~20)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", help="the low-res .mp4 (with --evaluate: the high-res truth)")
    parser.add_argument("--checkpoint", required=True, help="upsampler export folder")
    parser.add_argument("--tae", required=True, help="TAE folder (TAE.save_pretrained) or 'toy-tae'")
    parser.add_argument("--height", type=int, required=True, help="output height (multiple of 16)")
    parser.add_argument("--width", type=int, required=True, help="output width (multiple of 16)")
    parser.add_argument("--frames", type=int, default=None, help="frames to take (default: all at --fps)")
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--start", type=float, default=0.0, help="seconds")
    parser.add_argument("--evaluate", type=float, default=None, metavar="FACTOR",
                        help="take the video (at --height x --width) as the truth, downscale by FACTOR, upsample, "
                             "print PSNRs against the truth")
    parser.add_argument("--prompt", default=None, help="text for the upsampler (default: none, all text masked)")
    parser.add_argument("--text-encoders", choices=("paper", TOY_TEXT_ENCODERS), default=TOY_TEXT_ENCODERS)
    parser.add_argument("--seed", type=cli.seed, default=0)
    parser.add_argument("--out", default="outputs/upsampled.mp4")
    add_sampling_arguments(parser)
    add_precision_argument(parser)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. parallel.tensor_model_parallel_size=2")
    return parser.parse_args(argv)


def read_video(path: str, start: float, fps: float, frames: int | None, height: int | None = None,
               width: int | None = None) -> torch.Tensor:
    """(1, 3, t, h, w) in [-1, 1]: `frames` frames at `fps` (all by default), at its own size unless given."""
    decoder = PyAVDecoder()
    info = decoder.probe(path)
    if frames is None:
        frames = int((info.duration_s - start) * fps + 1e-6)
    request = ClipRequest(start, fps, frames, height or info.height, width or info.width)
    decoded = decoder.clip_frames(path, request) if height else decoder.native_frames(path, request)
    return to_unit_range(decoded)[None]


def upsampled_size(height: int, width: int, scale: float, multiple: int = 16) -> tuple[int, int]:
    """(height, width) x scale, each rounded to the nearest multiple of `multiple` (at least one)."""
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (height, width))


def upsample_files(paths: list[Path], checkpoint: str, tae: str, scale: float, settings: UpsamplingConfig,
                   overrides: list[str], runtime: Runtime) -> list[Path]:
    """Each written video <name>.mp4 -> <name>.<hash of its sidecar>.upsampled.mp4 (+ .json) through the upsampler export
    (`generate --upsample`). Every rank calls it; rank 0 reads and writes the files."""
    cfg, chunks = load_exported_dit(checkpoint, overrides, runtime)
    upsampler = SpatialUpsampler(chunks[0], load_tae(tae, runtime.device))
    written = []
    for path in paths:
        low = read_video(str(path), 0.0, settings.fps, None) if dist.get_rank() == 0 else None
        payload = [low]
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(payload, src=0, device=runtime.device)
        low = payload[0]
        height, width = upsampled_size(low.shape[-2], low.shape[-1], scale)
        pixels = upsampler.upsample(low, height, width, settings).cpu()
        record = {"source": str(path), "checkpoint": checkpoint, "tae": tae, "size": [height, width],
                  "steps": settings.steps, "window_frames": settings.window_frames,
                  "overlap_frames": settings.overlap_frames, "seed": settings.seed,
                  **command_record(runtime.params_dtype, overrides, [])}
        out = path.with_name(f"{path.stem}.{record_digest(record)}.upsampled.mp4")
        if dist.get_rank() == 0:
            write_video(out, pixels[0], fps=settings.fps)
            write_json(out.with_suffix(".json"), record)
        written.append(out)
    return written


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_export_folder(args.checkpoint)
    runtime = Runtime.resolve(args.precision, distributed_optimizer=False)
    with torn_down_after():
        cfg, chunks = load_exported_dit(args.checkpoint, args.overrides, runtime)
        rank = dist.get_rank()
        text = load_text_encoders(args.text_encoders, [], cfg.model) if rank == 0 and args.prompt else None
        upsampler = SpatialUpsampler(chunks[0], load_tae(args.tae, runtime.device), text)
        settings = UpsamplingConfig(window_frames=args.window_frames, overlap_frames=args.overlap_frames,
                                    steps=args.steps, seed=args.seed, prompt=args.prompt, fps=round(args.fps))
        if args.evaluate is not None:
            truth = read_video(args.video, args.start, args.fps, args.frames, args.height, args.width)
            report = evaluate_upsampling(upsampler, truth, UpsampleConfig(low_resolution_factor=args.evaluate),
                                         settings)
            pixels = report.pop("pixels")
            report.pop("bilinear")
        else:
            low = read_video(args.video, args.start, args.fps, args.frames)
            pixels = upsampler.upsample(low, args.height, args.width, settings, progress=True).cpu()
            report = {"frames": low.shape[2], "size": [args.height, args.width], "low_size": list(low.shape[-2:])}
        report.update(source=args.video, checkpoint=args.checkpoint, tae=args.tae, steps=args.steps,
                      window_frames=args.window_frames, overlap_frames=args.overlap_frames, seed=args.seed)
        if rank == 0:
            out = Path(args.out)
            write_video(out, pixels[0], fps=args.fps)
            write_json(out.with_suffix(".json"), report)
            print(json.dumps(report, indent=2))
        return report


if __name__ == "__main__":
    main()
