"""Turn videos/images and captions into latent shards for training (logic: megatron_moviegen.data.preencode).

    python tools/preencode_latents.py --manifest clips.jsonl --out data/latents \\
        --tae runs/tae/checkpoint --text-encoders paper --text ul2.path=/models/ul2 \\
        --set buckets.resolution=256 shard_size=128 --num-workers 8
    torchrun --nproc-per-node 8 tools/preencode_latents.py ...   # each rank writes its share of the shards

Both encoders must be named (no defaults: forgetting one must not silently write random latents).
`--tae` is a TAE folder (TAE.save_pretrained) or a toy: `toy-tae` (configs/tae/tae_tiny.yaml, untrained,
seed 0: the decoder `generate --tae toy-tae` uses) or `toy-conv` (a fixed random stride-8 conv: shapes only,
fastest). `--text-encoders paper` loads UL2/MetaCLIP/ByT5 (paths via `--text FIELD=VALUE`); `toy` uses
random byte-embedding encoders shaped like configs/tiny.yaml's text inputs. Toys are for tests and demos.

A recipe with data.reference (personalization: pt2v, pt2v_tiny) also encodes each entry's reference image with its
CLIP vision tower (`--set reference.encoder=/models/metaclip-h14`).

A recipe with data.audio (Movie Gen Audio: audio_13b, audio_tiny) encodes each entry's soundtrack with the audio
autoencoder given by `--audio-ae` (a train_audio_ae checkpoint folder) instead of a TAE, its video frame by frame
with the CLIP vision tower data.audio.video_encoder, and its caption with the model's text encoder (T5):

    python tools/preencode_latents.py --config audio_13b --manifest clips.jsonl --out data/audio_latents \
        --audio-ae runs/audio_ae/checkpoint --text-encoders paper --text t5.path=/models/t5-base \
        --set audio.video_encoder=/models/metaclip-h14

Unusable entries go to rejects.jsonl with a kind and a reason; a source that cannot be read is retried
(`--set io_retries=3 io_retry_delay_s=0.5`) and, if it still fails, rejected with kind "io". After the file
system recovers, rerun with `--retry-rejects` to read those entries again. A bad manifest, config or output
folder exits 2 with one line naming the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from megatron_moviegen.config.schema import ConfigError, apply_overrides, build
from megatron_moviegen.data.config import REFERENCE_SOURCE, DataConfig
from megatron_moviegen.models.toy_encoders import TAEVideoEncoder, TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.data.manifest import ManifestError, ManifestFile
from megatron_moviegen.data.preencode import NonFiniteEncoderError, Preencoder, use_local_device
from megatron_moviegen.runtime import Runtime, rank_and_world_from_env


TOY_TAES = ("toy-tae", "toy-conv")
TEXT_ENCODERS = ("paper", "toy")
RENAMED = {("--tae", "tiny"): "toy-tae", ("--tae", "conv"): "toy-conv", ("--text-encoders", "tiny"): "toy"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help=".jsonl, .csv, or a folder of media with .txt captions")
    parser.add_argument("--out", required=True, help="output folder of shards")
    parser.add_argument("--tae", help=f"TAE folder, or {' / '.join(TOY_TAES)} (see above); required for video")
    parser.add_argument("--audio-ae", help="audio autoencoder folder (train_audio_ae's checkpoint), for a data.audio "
                                           "recipe, instead of --tae")
    parser.add_argument("--text-encoders", help=f"{' or '.join(TEXT_ENCODERS)}; required")
    parser.add_argument("--text", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="TextEncodersConfig overrides for --text-encoders paper, e.g. ul2.path=/models/ul2")
    parser.add_argument("--device", default=Runtime.resolve().device.type,
                        help="cpu, cuda (= cuda:<LOCAL_RANK or SLURM_LOCALID>: one GPU per rank) or cuda:N")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N manifest entries")
    parser.add_argument("--shard-size", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=None, help="decode processes (0: in-process)")
    parser.add_argument("--dry-run", action="store_true", help="report buckets and rejects; decode nothing")
    parser.add_argument("--retry-rejects", action="store_true",
                        help='read entries rejected with kind "io" by an earlier run again (rewrites only the '
                             "shards that gain samples)")
    parser.add_argument("--config", default=None,
                        help="take the data section (buckets, shard size, ...) from this training recipe")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="FIELD=VALUE",
                        help="DataConfig overrides; repeated --set flags add up (slurm/preencode.sh passes the decoder)")
    args = parser.parse_args(argv)
    # A dry run encodes nothing, so it may leave the encoders out.
    problem = encoder_choice_error(args.tae, args.text_encoders, required=not args.dry_run, audio_ae=args.audio_ae)
    if problem:
        parser.error(problem)
    return args


def encoder_choice_error(tae: str | None, text_encoders: str | None, required: bool = True,
                         audio_ae: str | None = None) -> str | None:
    """Why this --tae (or --audio-ae) / --text-encoders pair cannot run, or None when it can."""
    if tae is not None and audio_ae is not None:
        return "--tae and --audio-ae: give one (the TAE for video recipes, the audio autoencoder for data.audio)"
    for flag, value, needed in (("--tae", tae if audio_ae is None else audio_ae,
                                 f"a TAE folder or {' / '.join(TOY_TAES)} (--audio-ae for a data.audio recipe)"),
                                ("--text-encoders", text_encoders, " or ".join(TEXT_ENCODERS))):
        if value is None and required:
            return f"{flag} is required: give {needed} (the toys write random latents/embeddings)"
        if (flag, value) in RENAMED:
            return f"{flag} {value}: renamed, use {flag} {RENAMED[flag, value]} (a toy encoder with random weights)"
    if text_encoders not in (None, *TEXT_ENCODERS):
        return f"--text-encoders: got {text_encoders!r}, expected one of {list(TEXT_ENCODERS)}"
    return None


def build_video_encoder(source: str, device: torch.device, dtype: str = "auto"):
    if source == "toy-conv":
        return TinyVideoEncoder(device=device)
    from megatron_moviegen.inference.components import load_tae

    return TAEVideoEncoder(load_tae(source, device), dtype=dtype)


def build_text_encoder(args, device: torch.device):
    if args.text_encoders == "toy":
        if args.text:
            raise SystemExit(f"--text {args.text} applies to --text-encoders paper, not toy")
        from megatron_moviegen.recipes import load_config

        return TinyTextEncoders.for_model(load_config(args.config or "tiny").model)
    from megatron_moviegen.recipes import check_text_encoders, load_config
    from megatron_moviegen.text import TextEncoders
    from megatron_moviegen.text.config import text_encoders_config, text_encoders_for_model

    if args.config is None:  # the video model's three encoders at their default lengths
        return TextEncoders(text_encoders_config(args.text, base={"device": str(device)}))  # --text wins
    model = load_config(args.config).model  # the recipe's model reads these embeddings: the encoders it names
    config = text_encoders_for_model(args.text, model.text_encoders, base={"device": str(device)})
    check_text_encoders(config, model)
    return TextEncoders(config)


def build_audio_encoders(config: DataConfig, audio_ae: str | None, device: torch.device, model=None):
    """With data.audio: (the audio autoencoder of folder `audio_ae` behind AudioLatentEncoder, the video-feature
    tower); else (None, None). The tower's width must be the recipe's model.condition_channels."""
    if config.audio is None:
        return None, None
    from megatron_moviegen.models.audio_ae import AudioAutoencoder, AudioLatentEncoder
    from megatron_moviegen.models.vision_tower import FrameFeatureEncoder

    audio = config.audio
    try:
        autoencoder = AudioAutoencoder.from_pretrained(audio_ae).to(device).eval().requires_grad_(False)
        frames = FrameFeatureEncoder(audio.video_encoder, str(device) if audio.device == "auto" else audio.device,
                                     audio.dtype)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if model is not None and model.condition_channels != frames.width:
        raise ConfigError(f"model.condition_channels: {model.condition_channels}, but {audio.video_encoder} gives "
                          f"{frames.width}-wide video features")
    return AudioLatentEncoder(autoencoder), frames


def build_reference_encoder(config: DataConfig, device: torch.device, model=None):
    """With data.reference (personalization), its CLIP vision tower on this rank's device; else None."""
    if config.reference is None:
        return None
    from dataclasses import replace

    from megatron_moviegen.models.vision_tower import ReferenceEncoder

    reference = config.reference if config.reference.device != "auto" else replace(config.reference, device=str(device))
    try:
        encoder = ReferenceEncoder(reference)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.reference.encoder: {exc}") from None
    if model is not None:  # the recipe's DiT reads these tokens: their width and length must match
        wanted = model.extra_context.get(REFERENCE_SOURCE)
        if wanted is None or (wanted.width, wanted.max_length) != (encoder.width, reference.max_length):
            raise ConfigError(f"model.extra_context.{REFERENCE_SOURCE}: {wanted}, but {reference.encoder} gives "
                              f"{encoder.context_source()}")
    return encoder


def load_recipe_model(recipe: str | None):
    if recipe is None:
        return None
    from megatron_moviegen.recipes import load_config

    return load_config(recipe).model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return preencode(args)
    except (ConfigError, ManifestError, NonFiniteEncoderError) as exc:
        print(f"preencode_latents: error: {exc}", file=sys.stderr)
        return 2


def encoder_sources(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """{role: {"source": where its encoder loads from}} as pre-encoding records it for generation's defaults: the TAE
    or audio autoencoder (a folder made absolute, or a toy's name), the text encoders' kind and its --text overrides
    (one per line)."""
    def absolute(source: str | None) -> str | None:
        return str(Path(source).resolve()) if source is not None and Path(source).exists() else source

    sources = {"video": absolute(args.tae), "audio": absolute(args.audio_ae), "text": args.text_encoders}
    out = {role: {"source": source} for role, source in sources.items() if source is not None}
    if args.text and "text" in out:
        out["text"]["overrides"] = "\n".join(args.text)
    return out


def preencode(args: argparse.Namespace) -> int:
    data = {}
    if args.config is not None:
        from megatron_moviegen.config import to_dict
        from megatron_moviegen.recipes import load_config

        data = to_dict(load_config(args.config).data)
    data = apply_overrides(data, list(args.set))
    if args.shard_size is not None:
        data["shard_size"] = args.shard_size
    if args.num_workers is not None:
        data["num_workers"] = args.num_workers
    config = build(DataConfig, data)
    manifest = ManifestFile(args.manifest, limit=args.limit)  # each rank reads only its own entries
    rank, world_size = rank_and_world_from_env()
    # A dry run decodes and encodes nothing, so it needs no model weights (and no GPU).
    device = torch.device("cpu") if args.dry_run else use_local_device(args.device)
    if config.audio is None and args.audio_ae is not None:
        raise ConfigError("--audio-ae is for a data.audio recipe (audio_13b, audio_tiny); this one encodes video: "
                          "give --tae")
    if config.audio is not None and args.tae is not None:
        raise ConfigError("data.audio is set: give the audio autoencoder with --audio-ae, not --tae")
    if config.audio is not None and args.audio_ae is None and not args.dry_run:
        raise ConfigError("data.audio is set: give the audio autoencoder with --audio-ae")
    model = None if args.dry_run else load_recipe_model(args.config)
    video_encoder = None if args.dry_run or config.audio is not None else build_video_encoder(args.tae, device, config.tae_dtype)
    audio_encoder, frame_encoder = (None, None) if args.dry_run else build_audio_encoders(config, args.audio_ae,
                                                                                         device, model)
    text_encoder = None if args.dry_run else build_text_encoder(args, device)
    reference_encoder = None if args.dry_run else build_reference_encoder(config, device, model)
    preencoder = Preencoder(config, video_encoder, text_encoder, args.out, device=device, rank=rank,
                            world_size=world_size, reference_encoder=reference_encoder, audio_encoder=audio_encoder,
                            frame_encoder=frame_encoder, encoder_sources=encoder_sources(args))
    if args.dry_run:
        counts, rejects = preencoder.dry_run(manifest)
        print(json.dumps({"entries": sum(counts.values()) + len(rejects), "per_bucket": dict(sorted(counts.items())),
                          "rejected": [r.record() for r in rejects]}, indent=2))
        return 0
    summary = preencoder.run(manifest, retry_rejects=args.retry_rejects)
    print(json.dumps({"rank": rank, "encoded": summary.encoded, "rejected": summary.rejected,
                      "shards_written": summary.shards_written, "shards_skipped": summary.shards_skipped,
                      "seconds": round(summary.seconds, 2), "samples_per_s": round(summary.samples_per_s, 3),
                      "per_bucket": dict(sorted(summary.per_bucket.items()))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
