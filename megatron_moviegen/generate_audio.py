"""Sound for a video, or from text alone, with an exported Movie Gen Audio DiT: `generate-audio` (the console
script), `python -m megatron_moviegen.generate_audio` or `tools/generate_audio.py`.

    generate-audio --checkpoint runs/audio_export --audio-ae runs/audio_ae/checkpoint --video in.mp4 \\
        --prompt "rain on a tin roof" --text t5.path=/models/t5-base --video-encoder /models/metaclip-h14

    # text to audio, 20 s (two overlapping 10 s windows of audio_13b), continuing a recording's first 5 s
    generate-audio --checkpoint runs/audio_export --audio-ae runs/audio_ae/checkpoint --seconds 20 \\
        --prompt "a jazz trio" --continue-from take1.wav --continue-seconds 5

Writes <output-dir>/<index>-<prompt words>-seed<seed>.wav, with --video also .mp4 (the video's stream copied, the
audio as AAC), and a .json sidecar. Audio longer than the model's window (--window-seconds, default the export's
model.max_frames latent frames) is sampled in overlapping windows blended with triangle weights at every Euler step.
`section.field=value` arguments override the export's config (e.g. parallel.tensor_model_parallel_size=2 under
torchrun). Bad arguments are refused before the DiT loads where they can be: one `generate_audio: error: ...` line,
exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_moviegen.checkpoints.distributed import CheckpointError
from megatron_moviegen.checkpoints.export import load_exported_dit, read_exported_config
from megatron_moviegen.data.audio import read_audio
from megatron_moviegen.data.decode import DecodeError, PyAVDecoder
from megatron_moviegen.diffusion.sampling import SCHEDULES, SOLVERS
from megatron_moviegen.inference.audio import AudioPipeline, AudioSamplingConfig, window_frames
from megatron_moviegen.inference.components import TOY_TEXT_ENCODERS, load_text_encoders
from megatron_moviegen.inference.pipeline import check_prompts, command_record
from megatron_moviegen.kinds import kind_of
from megatron_moviegen.models.audio_ae import AudioAutoencoder
from megatron_moviegen.models.vision_tower import FrameFeatureEncoder, resolve_encoder_source
from megatron_moviegen.parallel.initialize import torn_down_after
from megatron_moviegen.runtime import Runtime, add_precision_argument, rank_and_world_from_env
from megatron_moviegen.utils import cli
from megatron_moviegen.utils.io import check_writable_folder

DEFAULTS = AudioSamplingConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Generate audio for a video, or from text, with a Movie Gen Audio DiT.")
    parser.add_argument("--checkpoint", required=True, help="audio DiT export folder (config.yaml + model.safetensors)")
    parser.add_argument("--audio-ae", required=True, help="audio autoencoder folder (train_audio_ae's checkpoint)")
    parser.add_argument("--prompt", required=True, help="what the audio should sound like")
    parser.add_argument("--video", default=None, help="the video to make sound for (its duration unless --seconds)")
    parser.add_argument("--seconds", type=float, default=None, help="length; required without --video")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help="solver steps (the paper: 64 midpoint)")
    parser.add_argument("--solver", choices=sorted(SOLVERS), default=DEFAULTS.solver,
                        help="ODE solver: midpoint (2 velocity evaluations a step, the paper's) or euler (1)")
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default=DEFAULTS.schedule, help="time schedule")
    parser.add_argument("--guidance-scale", type=float, default=DEFAULTS.guidance_scale,
                        help="classifier-free guidance over text and video together (1 = none)")
    parser.add_argument("--seed", type=cli.seed, default=DEFAULTS.seed)
    add_precision_argument(parser)
    parser.add_argument("--window-seconds", type=float, default=None,
                        help="window length (default: the model's: model.max_frames latent frames)")
    parser.add_argument("--overlap-seconds", type=float, default=None, help="window overlap (default: a quarter)")
    parser.add_argument("--continue-from", default=None, metavar="MEDIA",
                        help="audio (or a video's soundtrack) whose first --continue-seconds are kept; the rest is "
                             "generated (masked-audio infilling)")
    parser.add_argument("--continue-seconds", type=float, default=None,
                        help="seconds of --continue-from to keep (default: all of it, up to the output's length)")
    parser.add_argument("--video-encoder", default=None,
                        help="the CLIP vision tower for the video features (default: the export's "
                             "data.audio.video_encoder)")
    parser.add_argument("--text-encoders", choices=("paper", TOY_TEXT_ENCODERS), default="paper")
    parser.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                        help="TextEncodersConfig override, e.g. t5.path=/models/t5-base (repeatable)")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. parallel.tensor_model_parallel_size=2")
    args = parser.parse_args(argv)
    if args.video is None and args.seconds is None:
        parser.error("give --seconds for text to audio (without --video)")
    if args.continue_seconds is not None and args.continue_from is None:
        parser.error("--continue-seconds applies to --continue-from only")
    return args


def read_continuation(args: argparse.Namespace, sample_rate: int, channels: int) -> torch.Tensor | None:
    """--continue-from -> its first --continue-seconds of audio (channels, n) at the autoencoder's rate."""
    if args.continue_from is None:
        return None
    if not Path(args.continue_from).is_file():
        raise FileNotFoundError(f"--continue-from: {args.continue_from} is not a file")
    try:
        return read_audio(args.continue_from, sample_rate, channels, duration_s=args.continue_seconds)
    except DecodeError as exc:
        raise ValueError(f"--continue-from: {exc}") from None


def generate_audio(argv: list[str] | None = None) -> list[Path]:
    """Run the command line `argv`; returns the paths written. The prompt, settings, the export's config, the
    autoencoder, the video, the audio to continue and the output folder are checked before the DiT loads."""
    args = parse_args(argv)
    check_prompts([args.prompt])
    settings = AudioSamplingConfig(seconds=args.seconds, steps=args.steps, solver=args.solver, schedule=args.schedule,
                                   guidance_scale=args.guidance_scale,
                                   seed=args.seed, window_s=args.window_seconds, overlap_s=args.overlap_seconds)
    settings.validate()
    cfg = read_exported_config(args.checkpoint, args.overrides)
    if kind_of(cfg).name != "audio":
        raise ValueError(f"--checkpoint: {args.checkpoint} is not an audio export (its config has no data.audio); "
                         "train one with the audio_13b or audio_tiny recipe")
    audio = cfg.data.audio
    window_frames(settings, cfg.model.max_frames, audio.latent_rate)
    autoencoder = AudioAutoencoder.from_pretrained(args.audio_ae)
    if args.video is not None:
        if not Path(args.video).is_file():
            raise FileNotFoundError(f"--video: {args.video} is not a file")
        try:
            video_s = PyAVDecoder().probe(args.video).duration_s
        except DecodeError as exc:
            raise ValueError(f"--video: {exc}") from None
        if args.seconds is not None and args.seconds > video_s:
            raise ValueError(f"--seconds: got {args.seconds}, longer than the video ({video_s:.2f} s), whose frames "
                             "condition the audio")
    continuation = read_continuation(args, autoencoder.cfg.sample_rate, autoencoder.cfg.audio_channels)
    video_encoder = args.video_encoder or audio.video_encoder
    resolve_encoder_source(video_encoder, "--video-encoder")  # a missing tower folder is named before the DiT loads
    check_writable_folder(args.output_dir, "--output-dir")
    runtime = Runtime.resolve(args.precision, distributed_optimizer=False)
    with torn_down_after():
        cfg, chunks = load_exported_dit(args.checkpoint, args.overrides, runtime)
        rank = dist.get_rank()
        text_encoders = load_text_encoders(args.text_encoders, args.text, cfg.model) if rank == 0 else None
        frame_encoder = FrameFeatureEncoder(video_encoder, str(runtime.device)) if rank == 0 else None
        sources = {"checkpoint": str(args.checkpoint), "audio_ae": args.audio_ae, "video_encoder": video_encoder,
                   "text_encoders": args.text_encoders, **command_record(runtime.params_dtype, args.overrides, args.text),
                   **({} if args.continue_from is None else {"continue_from": args.continue_from})}
        pipeline = AudioPipeline(chunks[0], autoencoder.to(runtime.device).eval(), text_encoders, frame_encoder,
                                 replace(audio, video_encoder=video_encoder), sources)
        started = time.perf_counter()
        paths = pipeline.generate(args.prompt, settings, args.output_dir, video=args.video, continuation=continuation)
        if rank == 0:
            for path in paths:
                print(f"wrote {path}")
            print(f"{settings.steps} steps: {time.perf_counter() - started:.1f} s")
        return paths


def main(argv: list[str] | None = None) -> int:
    """`generate-audio` as a command: 0, or 2 after one `generate_audio: error: ...` line (rank 0 prints it)."""
    try:
        generate_audio(argv)
    except (ValueError, OSError, CheckpointError) as exc:
        if rank_and_world_from_env()[0] == 0:  # torchrun RANK or srun SLURM_PROCID
            print(f"generate_audio: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
