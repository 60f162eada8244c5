"""Evaluate a TAE (and a DiT) on clips with known captions: the command (`tools/evaluate.py`); the work for each model
kind is its `Kind.evaluate` (megatron_moviegen/kinds/), the metrics megatron_moviegen.evaluation.

    python tools/evaluate.py --manifest heldout.jsonl --config quickstart --tae runs/tae/checkpoint
    python tools/evaluate.py --manifest train.jsonl --config quickstart --tae runs/tae/checkpoint \\
        --checkpoint outputs/export --text-encoders toy --steps 50 --out outputs/eval

Clips are decoded and bucketed with the recipe's `data.buckets` (what pre-encoding did). Prints the table and
writes <out>/eval.json and <out>/side_by_side.png (rows: original, TAE reconstruction, generated).

With a personalization recipe (data.reference) the manifest's entries name their `subject`, and the one caption is
sampled with each subject's reference image (the one it trained with, a held-out frame), another's and none, each
scored against every subject's clips (rows: the reference's clip, generated).

With an audio recipe (data.audio) each file of the manifest is taken whole: audio is generated for its video and
caption, and scored against every file's true soundtrack (mel distance, SNR) beside the audio autoencoder's ceiling
(rows of the PNG: log-mel spectrograms of the true, reconstructed and generated audio):

    python tools/evaluate.py --manifest clips.jsonl --config audio_tiny --audio-ae runs/audio_ae \
        --checkpoint outputs/audio/export --text-encoders toy --steps 50 --guidance-scale 1

With an editing recipe (data.edit) the manifest holds (source, instruction, target) pairs and each edit is sampled
from its source (rows: source, true edit, TAE reconstruction of it, the model's edit):

    python tools/evaluate.py --manifest pairs/manifest.jsonl --config edit_tiny --tae runs/tae \
        --checkpoint outputs/edit/export --text-encoders toy --steps 50 --source-guidance-scale 1.5
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

from megatron_moviegen.diffusion.sampling import SCHEDULES, SOLVERS
from megatron_moviegen.evaluation import write_report
from megatron_moviegen.inference.audio import AudioSamplingConfig
from megatron_moviegen.inference.components import TOY_TEXT_ENCODERS, load_text_encoders
from megatron_moviegen.runtime import add_precision_argument
from megatron_moviegen.utils import cli

AUDIO_DEFAULTS = AudioSamplingConfig()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="clips with captions (.jsonl, .csv or a folder)")
    parser.add_argument("--config", required=True, help="training recipe whose data.buckets shape the clips")
    parser.add_argument("--tae", help="TAE folder (TAE.save_pretrained) or 'toy-tae'; required but for audio")
    parser.add_argument("--audio-ae", help="audio autoencoder folder, for an audio recipe (data.audio)")
    parser.add_argument("--checkpoint", help="DiT export folder; without it only the TAE is evaluated")
    parser.add_argument("--text-encoders", choices=("paper", TOY_TEXT_ENCODERS), default="paper")
    parser.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--audio-solver", choices=sorted(SOLVERS), default=AUDIO_DEFAULTS.solver,
                        help="audio: ODE solver (the paper's: midpoint, 2 velocity evaluations a step)")
    parser.add_argument("--audio-schedule", choices=sorted(SCHEDULES), default=AUDIO_DEFAULTS.schedule,
                        help="audio: time schedule")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--source-guidance-scale", type=float, default=1.5, help="editing: guidance over the source")
    parser.add_argument("--seed", type=cli.seed, default=0)
    parser.add_argument("--frames-in-png", type=int, default=4)
    parser.add_argument("--fvd-model", help="t2v: a local VideoMAE folder (transformers): FVD of the TAE's and the "
                        "generated videos against the clips (utils/distribution.py)")
    parser.add_argument("--clip-model", help="t2v: a local CLIPModel folder (transformers): CLIP score of the clips "
                        "and the generated videos against their captions")
    add_precision_argument(parser)
    parser.add_argument("--out", default="outputs/eval")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. 'data.buckets.aspect_ratios=[\"1:1\"]'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation command line `argv` for its recipe's kind; returns the report."""
    from megatron_moviegen.kinds import kind_of
    from megatron_moviegen.recipes import load_config

    args = parse_args(argv)
    recipe = load_config(args.config, args.overrides)
    kind = kind_of(recipe)
    given = [flag for flag, value in (("--tae", args.tae), ("--audio-ae", args.audio_ae)) if value is not None]
    if given != [kind.evaluate_with]:
        raise SystemExit(f"evaluate: error: {args.config} is a recipe of kind {kind.name}: give "
                         f"{kind.evaluate_with} (and not the other)")
    return kind.evaluate(args, recipe)


@contextmanager
def exported_model(args: argparse.Namespace, needed_by: str = ""):
    """--checkpoint's export on this process: (its config, its one DiT chunk, the text encoders it reads); Megatron's
    groups (and the process group, if this started it) are torn down after. `needed_by` names a recipe kind that
    cannot be evaluated without the export."""
    from megatron_moviegen.checkpoints.export import load_exported_dit
    from megatron_moviegen.parallel.initialize import torn_down_after
    from megatron_moviegen.runtime import Runtime

    if not args.checkpoint:
        raise SystemExit(f"evaluate: error: {needed_by} needs --checkpoint (the model's export)")
    with torn_down_after():
        cfg, chunks = load_exported_dit(args.checkpoint, [], Runtime.resolve(args.precision, distributed_optimizer=False))
        yield cfg, chunks[0], load_text_encoders(args.text_encoders, args.text, cfg.model)


def finish(args: argparse.Namespace, report: dict, videos: list, table, frames: int | None = None) -> dict:
    """Record the inputs in the report, write eval.json and side_by_side.png, print `table(report)`."""
    report.update(tae=args.tae or args.audio_ae, checkpoint=args.checkpoint, manifest=args.manifest)
    json_path, png = write_report(report, videos, args.out, frames or args.frames_in_png)
    print(table(report))
    print(f"wrote {json_path} and {png}")
    return report
