"""Write a Hugging Face diffusers pipeline folder (MovieGenVideoPipeline) from a text-to-video DiT.

    python tools/export_diffusers.py --checkpoint outputs/export --out outputs/diffusers \\
        --tae outputs/tae/checkpoint --text ul2.path=/models/ul2 --text metaclip.path=/models/metaclip \\
        --text byt5.path=/models/byt5
    # CPU demo: the quickstart's tiny model with the toy TAE and text encoders
    python tools/export_diffusers.py --checkpoint outputs/quickstart/export --out outputs/quickstart/diffusers \\
        --tae toy-tae --text-encoders toy

    # a LoRA run's adapters, for load_lora_weights on its base model's pipeline (peft installed)
    python tools/export_diffusers.py --lora --checkpoint outputs/lora/checkpoints --out outputs/lora/diffusers_lora

    # then, in Python
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("outputs/diffusers", dtype=torch.float32, trust_remote_code=True)
    pipe.load_lora_weights("outputs/lora/diffusers_lora")

trust_remote_code=True: diffusers finds a pipeline class outside its own package only through the folder's
pipeline.py, which imports MovieGenVideoPipeline from the installed megatron_moviegen
(`MovieGenVideoPipeline.from_pretrained` needs no flag).

--checkpoint is an export folder (tools/export_checkpoint.py) or a training checkpoint (converted first, one
process). Transformer tensors are written one file at a time (--max-shard-size). --out must not exist; it is
written as <out>.tmp and renamed when complete. Errors: one `export_diffusers: error: ...` line, exit 2.
"""

import argparse
import sys
import warnings

from megatron_moviegen.utils.io import byte_size_argument


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an export folder, or a training checkpoint / step folder")
    parser.add_argument("--out", required=True, help="the pipeline folder to write (must not exist)")
    parser.add_argument("--tae", default=None, help="a TAE folder, a Hub id, or 'toy-tae'; default: the one the model "
                                                     "was trained with (recorded by pre-encoding)")
    parser.add_argument("--text-encoders", choices=("paper", "toy"), default=None,
                        help="default: those the model was trained with (and their recorded overrides), else paper")
    parser.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                        help="paper text-encoder overrides, e.g. ul2.path=/models/ul2 (repeatable)")
    parser.add_argument("--dtype", choices=["bf16", "fp32", "as-saved"], default="as-saved",
                        help="dtype of the transformer's tensors (default: the export's)")
    parser.add_argument("--max-shard-size", type=byte_size_argument, default="5GB",
                        help="largest transformer file, e.g. 5GB, 500MB")
    parser.add_argument("--lora", action="store_true",
                        help="--checkpoint is a LoRA run's: write its adapters to --out/pytorch_lora_weights"
                             ".safetensors (diffusers' LoRA format) instead of a pipeline")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    import torch.distributed as dist

    from megatron_moviegen.hf.diffusers_format import export_pipeline
    from megatron_moviegen.checkpoints.distributed import CheckpointError
    from megatron_moviegen.checkpoints.export import EXPORT_DTYPES
    from megatron_moviegen.checkpoints.tp_shards import ShapeMismatch
    from megatron_moviegen.config.schema import ConfigError

    from megatron_moviegen.hf.lora import export_lora

    try:
        if args.lora:
            out = export_lora(args.checkpoint, args.out)
            print(f"exported the adapters of {args.checkpoint} -> {out} (pipe.load_lora_weights({str(out)!r}))")
            return 0
        out = export_pipeline(args.checkpoint, args.out, args.tae, args.text_encoders, args.text,
                              EXPORT_DTYPES.get(args.dtype), args.max_shard_size)
    except (CheckpointError, ConfigError, ShapeMismatch, FileNotFoundError, FileExistsError, OSError,
            ValueError) as exc:
        print(f"export_diffusers: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(f"exported {args.checkpoint} -> {out} (load with DiffusionPipeline.from_pretrained({str(out)!r}, "
          "trust_remote_code=True))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
