"""Text to video from an exported DiT: `python -m megatron_moviegen.generate` (or `tools/generate.py`).

    python -m megatron_moviegen.generate --checkpoint runs/export --tae runs/tae/checkpoint \\
        --prompt "a corgi surfing a wave" --duration 4 --fps 16 --height 768 --width 768 \\
        --text ul2.path=/models/ul2 --text metaclip.path=/models/metaclip --text byt5.path=/models/byt5

    # CPU demo: tiny checkpoint, toy (random, fixed-seed) text encoders and an untrained toy TAE
    python -m megatron_moviegen.generate --checkpoint runs/tiny_export --tae toy-tae --text-encoders toy \\
        --prompt "a red ball" --frames 16 --height 64 --width 64 --steps 8

    # edit a video by instruction with an editing export (recipes edit_image / edit_video)
    python -m megatron_moviegen.generate --checkpoint runs/edit_export --tae runs/tae --edit-video in.mp4 \\
        --prompt "make it black and white" --guidance-scale 7.5 --source-guidance-scale 1.5

    # personalized video with a PT2V export (recipes pt2v / pt2v_tiny): the reference image selects who appears
    python -m megatron_moviegen.generate --checkpoint runs/pt2v_export --tae runs/tae --reference-image face.png \
        --prompt "a person surfing" --reference-encoder /models/metaclip-h14

    # tensor + context parallel sampling: torchrun --nproc-per-node 4 -m megatron_moviegen.generate ... \\
    #     parallel.tensor_model_parallel_size=2 parallel.context_parallel_size=2

Trailing `section.field=value` arguments override the export's config (its parallel section starts at one
process). bf16 weights on GPU, float32 on CPU. Rank 0 writes <output-dir>/<index>-<prompt words>-seed<seed>.mp4
(.png for --frames 1) and a .json sidecar beside each: another seed never overwrites an earlier file.

Bad arguments (an empty prompt, --guidance-scale nan, --frames 0, a size the TAE and patch cannot divide,
--steps 0, an unwritable --output-dir, a missing or mismatched checkpoint) are refused before the DiT is
loaded where they can be: one `generate: error: ...` line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_moviegen.data.buckets import bucket_size
from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.data.config import parse_aspect_ratio
from megatron_moviegen.inference.components import (TOY_TAE, TOY_TEXT_ENCODERS, default_sources, load_tae,
                                                     load_text_encoders, paper_text_encoders)
from megatron_moviegen.checkpoints.distributed import CheckpointError
from megatron_moviegen.checkpoints.export import check_export_folder, load_exported_dit, read_exported_config
from megatron_moviegen.inference.pipeline import (MovieGenPipeline, SamplingConfig, check_prompts, command_record,
                                                  latent_shape, resolve_fps)
from megatron_moviegen.inference.editor import EditingConfig, VideoEditor
from megatron_moviegen.inference.upsampler import UpsamplingConfig
from megatron_moviegen.kinds import Kind, kind_of
from megatron_moviegen.kinds.edit import read_edit_source
from megatron_moviegen.kinds.personalize import read_reference
from megatron_moviegen.models.vision_tower import ReferenceEncoder
from megatron_moviegen.parallel.initialize import torn_down_after
from megatron_moviegen.runtime import Runtime, add_precision_argument, rank_and_world_from_env
from megatron_moviegen.text.rewrite import DEFAULT_INSTRUCTIONS, PromptRewriter, read_instructions
from megatron_moviegen.upsample import add_sampling_arguments, upsample_files
from megatron_moviegen.utils import cli
from megatron_moviegen.utils.io import check_writable_folder


DEFAULTS = SamplingConfig()
EDIT_DEFAULTS = EditingConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generate videos (or images) with a Movie Gen DiT.")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt")
    prompts.add_argument("--prompts-file", help="a text file, one prompt per non-empty line")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--frames", type=int, help="frames to generate (1 = an image, written as PNG)")
    length.add_argument("--duration", type=float, help="seconds; frames = round(duration x fps)")
    parser.add_argument("--fps", type=int, default=None,
                        help="frame rate, also the prompt's FPS-<n> prefix; default: a rate the model was trained on "
                             f"({DEFAULTS.fps} if it was, else the lowest; {DEFAULTS.fps} when the export records none)")
    parser.add_argument("--height", type=int,
                        help=f"pixels (with --width); default {DEFAULTS.height} or from --aspect-ratio")
    parser.add_argument("--width", type=int)
    parser.add_argument("--aspect-ratio", help="bucket 'width:height' (e.g. 16:9) at --resolution, instead of sizes")
    parser.add_argument("--resolution", type=int, default=DEFAULTS.height,
                        help="bucket side: height x width ~ resolution^2")
    parser.add_argument("--seed", type=cli.seed, default=DEFAULTS.seed,
                        help="prompt i uses seed + i (see --same-seed)")
    parser.add_argument("--same-seed", action="store_true",
                        help="every prompt uses --seed (the same starting noise), to compare prompts")
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps, help="Euler steps, linear-quadratic schedule")
    parser.add_argument("--guidance-scale", type=float, default=DEFAULTS.guidance_scale)
    add_precision_argument(parser)
    parser.add_argument("--rewrite-prompt", default=None, metavar="MODEL",
                        help="rewrite each prompt into a dense caption with this local causal LM (a transformers "
                             "folder) before sampling, as the paper does; the sidecar keeps both")
    parser.add_argument("--rewrite-instructions", default=None, metavar="FILE",
                        help="the rewriter's instruction and examples (YAML; default text/rewrite_prompt.yaml)")
    parser.add_argument("--negative-prompt", default=None,
                        help="unconditional prompt; default: no text at all (as in training's text dropout)")
    parser.add_argument("--checkpoint", required=True, help="export folder (config.yaml + model.safetensors)")
    parser.add_argument("--tae", default=None,
                        help=f"TAE folder (TAE.save_pretrained), or {TOY_TAE!r} (untrained demo); default: the one "
                             "the export's shards were encoded with (recorded by pre-encoding)")
    parser.add_argument("--text-encoders", choices=("paper", TOY_TEXT_ENCODERS), default=None,
                        help="default: those the export's shards were encoded with (with their recorded --text "
                             "overrides), else paper")
    parser.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                        help="TextEncodersConfig override, e.g. ul2.path=/models/ul2 (repeatable)")
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--edit-video", metavar="VIDEO", default=None,
                        help="edit this video (or image) by the prompt(s) with an editing export: decoded at --fps, "
                             "--frames/--duration from the start (default: all of it), at --height x --width "
                             "(default: its own size)")
    parser.add_argument("--source-guidance-scale", type=float, default=None,
                        help="with --edit-video: guidance over the source video (1 = none; default "
                             f"{EDIT_DEFAULTS.source_guidance_scale})")
    parser.add_argument("--task", default=None,
                        help="with --edit-video: a task of the export's data.edit.tasks (default: its default_task)")
    parser.add_argument("--reference-image", metavar="MEDIA", default=None,
                        help="personalized (PT2V) export: the subject's reference image, or a video and "
                             "--reference-time")
    parser.add_argument("--reference-time", type=float, default=0.0, help="seconds into a --reference-image video")
    parser.add_argument("--reference-encoder", default=None,
                        help="the vision tower folder (default: the export's data.reference.encoder)")
    parser.add_argument("--upsample", metavar="CHECKPOINT", default=None,
                        help="a spatial-upsampler export: each generated video is then upsampled to "
                             "<name>.upsampled.mp4 (windows over latent frames, megatron_moviegen/upsample.py)")
    parser.add_argument("--upsample-scale", type=float, default=1.40625, help="size factor (768 px -> 1080p)")
    add_sampling_arguments(parser, prefix="upsample-")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. parallel.tensor_model_parallel_size=2")
    args = parser.parse_args(argv)
    if args.frames is None and args.duration is None and args.edit_video is None:
        args.frames = DEFAULTS.num_frames
    if args.edit_video is None and (args.task is not None or args.source_guidance_scale is not None):
        parser.error("--task and --source-guidance-scale apply to --edit-video only")
    if args.reference_image is None and args.reference_encoder is not None:
        parser.error("--reference-encoder applies to --reference-image only")
    if args.reference_image is not None and args.edit_video is not None:
        parser.error("--reference-image and --edit-video are exclusive (a personalized or an editing export)")
    if args.source_guidance_scale is None:
        args.source_guidance_scale = EDIT_DEFAULTS.source_guidance_scale
    if (args.height is None) != (args.width is None):
        parser.error("give both --height and --width, or neither")
    if args.aspect_ratio and args.height is not None:
        parser.error("--aspect-ratio and --height/--width are exclusive")
    return args


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    lines = [line.strip() for line in Path(args.prompts_file).read_text().splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise ValueError(f"--prompts-file {args.prompts_file!r} has no non-empty line")
    return prompts


def bucket_multiple(cfg: MovieGenConfig, compression: int) -> int:
    """The pixel multiple --aspect-ratio sizes to: the training buckets' `data.buckets.size_multiple` (t2v_30b: 64,
    so that context parallelism splits every bucket) and the TAE x patch step, whichever both divide."""
    return math.lcm(cfg.data.buckets.size_multiple, compression * cfg.model.patch_size[1])


def frames_for_duration(duration: float, fps: int) -> int:
    """--duration seconds at `fps` -> round(duration x fps) frames, refusing a length that gives no frame."""
    frames = round(duration * fps) if math.isfinite(duration) and fps >= 1 else 0
    if frames < 1:
        raise ValueError(f"--duration: got {duration:g} s, which at --fps {fps} gives {frames} frames; need a finite "
                         "duration of at least one frame (round(duration x fps) >= 1)")
    return frames


def sampling_config(args: argparse.Namespace, size_multiple: int, trained_fps: tuple[int, ...] = ()) -> SamplingConfig:
    fps = resolve_fps(args.fps, trained_fps)
    frames = args.frames  # None with --edit-video alone: all of the source (read_edit_source)
    if args.duration is not None:
        frames = frames_for_duration(args.duration, fps)
    if args.aspect_ratio:
        height, width = bucket_size(parse_aspect_ratio(args.aspect_ratio), args.resolution, size_multiple)
    else:
        height, width = (args.height, args.width) if args.height is not None else (DEFAULTS.height, DEFAULTS.width)
    return SamplingConfig(num_frames=frames, height=height, width=width, fps=fps, steps=args.steps,
                          guidance_scale=args.guidance_scale, seed=args.seed, negative_prompt=args.negative_prompt)


def check_sampled_here(kind: Kind, checkpoint: str) -> None:
    """An export of a kind that another command samples (audio: generate-audio) is refused, naming that command."""
    if kind.sampled_by != "generate":
        raise ValueError(f"--checkpoint: {checkpoint} is a model of kind {kind.name} ({kind.summary}); sample it with "
                         f"{kind.sampled_by}, not generate")


def rewrite_on_rank_0(prompts: list[str], args: argparse.Namespace, device: torch.device) -> list[str]:
    """`prompts` rewritten by --rewrite-prompt's model on rank 0 (then freed) and sent to every rank, so all ranks
    sample the same text."""
    rewritten = [None]
    if dist.get_rank() == 0:
        instructions = args.rewrite_instructions or DEFAULT_INSTRUCTIONS
        rewriter = PromptRewriter(args.rewrite_prompt, instructions, device=device)
        rewritten = [rewriter.rewrite_all(prompts)]
        del rewriter
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(rewritten, src=0, device=device)
    return rewritten[0]


def generate(argv: list[str] | None = None) -> list[Path]:
    """Run the command line `argv`; returns the media paths. Everything that can be checked without the DiT's
    weights (prompts, settings, sizes, the export's config, the TAE, the output folder) is checked first."""
    args = parse_args(argv)
    prompts = read_prompts(args)
    check_prompts(prompts)
    cfg = read_exported_config(args.checkpoint, args.overrides)
    check_sampled_here(kind_of(cfg), args.checkpoint)
    args.tae, args.text_encoders, args.text = default_sources(args.tae, args.text_encoders, args.text, cfg.model)
    if args.text_encoders != TOY_TEXT_ENCODERS:
        paper_text_encoders(args.text_encoders, args.text, cfg.model)  # widths checked before any weights load
    tae = load_tae(args.tae)
    settings = sampling_config(args, bucket_multiple(cfg, tae.cfg.compression), cfg.model.trained_fps)
    source = reference = None
    if args.edit_video:
        source, settings = read_edit_source(args, settings, cfg)
    if args.reference_image:
        reference, reference_config = read_reference(args, cfg)
    settings.validate()
    if args.upsample:
        check_export_folder(args.upsample)
    if args.rewrite_prompt and args.edit_video:
        raise ValueError("--rewrite-prompt: rewrites text-to-video prompts into captions; an edit's instruction is "
                         "not one (leave out --rewrite-prompt with --edit-video)")
    if args.rewrite_instructions:
        read_instructions(args.rewrite_instructions)  # a broken file fails before any model loads
    latent_shape(tae, cfg.model, 1, settings.num_frames, settings.height, settings.width)
    check_writable_folder(args.output_dir, "--output-dir")
    runtime = Runtime.resolve(args.precision, distributed_optimizer=False)
    with torn_down_after():
        cfg, chunks = load_exported_dit(args.checkpoint, args.overrides, runtime)
        dit = chunks[0]
        rank = dist.get_rank()
        text_encoders = load_text_encoders(args.text_encoders, args.text, cfg.model) if rank == 0 else None
        sources = {"checkpoint": str(args.checkpoint), "tae": args.tae, "text_encoders": args.text_encoders,
                   **command_record(runtime.params_dtype, args.overrides, args.text)}
        started = time.perf_counter()
        if source is not None:
            editor = VideoEditor(dit, tae.to(runtime.device), text_encoders, cfg.data.edit, sources)
            editing = EditingConfig(steps=settings.steps, guidance_scale=settings.guidance_scale,
                                    source_guidance_scale=args.source_guidance_scale, seed=settings.seed,
                                    task=args.task, fps=settings.fps)
            paths = editor.edit_files(source, args.edit_video, prompts, editing, args.output_dir, args.same_seed)
        else:
            reference_encoder = None
            if reference is not None:
                sources["reference_image"] = f"{args.reference_image}@{args.reference_time:g}s"
                reference_encoder = ReferenceEncoder(replace(reference_config, device=str(runtime.device))) \
                    if rank == 0 else None
            user_prompts = None
            if args.rewrite_prompt:
                sources["prompt_rewriter"] = args.rewrite_prompt
                user_prompts, prompts = prompts, rewrite_on_rank_0(prompts, args, runtime.device)
            pipeline = MovieGenPipeline(dit, tae.to(runtime.device), text_encoders, sources=sources,
                                        reference_encoder=reference_encoder)
            paths = pipeline.generate(prompts, settings, args.output_dir, same_seed=args.same_seed,
                                      reference=reference, user_prompts=user_prompts)
        if args.upsample:
            upsampling = UpsamplingConfig(window_frames=args.upsample_window_frames,
                                          overlap_frames=args.upsample_overlap_frames, steps=args.upsample_steps,
                                          seed=args.seed, fps=args.fps)
            paths += upsample_files(paths, args.upsample, args.tae, args.upsample_scale, upsampling, args.overrides,
                                    runtime)
        if rank == 0:
            seconds = time.perf_counter() - started
            for path in paths:
                print(f"wrote {path} (+ {path.with_suffix('.json').name})")
            print(f"{len(paths)} x {settings.num_frames} frames at {settings.height}x{settings.width}, "
                  f"{settings.steps} steps: {seconds:.1f} s")
        return paths


def main(argv: list[str] | None = None) -> int:
    """`generate` as a command: 0, or 2 after one `generate: error: ...` line (rank 0 prints it)."""
    try:
        generate(argv)
    except (ValueError, OSError, CheckpointError) as exc:
        if rank_and_world_from_env()[0] == 0:  # torchrun RANK or srun SLURM_PROCID
            print(f"generate: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
