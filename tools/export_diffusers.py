"""Write a Hugging Face diffusers pipeline folder (MovieGenVideoPipeline) from a text-to-video DiT.

    python tools/export_diffusers.py --checkpoint outputs/export --out outputs/diffusers \\
        --tae outputs/tae/checkpoint --text ul2.path=/models/ul2 --text metaclip.path=/models/metaclip \\
        --text byt5.path=/models/byt5
    # CPU demo: the quickstart's tiny model with the toy TAE and text encoders
    python tools/export_diffusers.py --checkpoint outputs/quickstart/export --out outputs/quickstart/diffusers \\
        --tae toy-tae --text-encoders toy

    # then, in Python
    from megatron_moviegen.hf import MovieGenVideoPipeline
    pipe = MovieGenVideoPipeline.from_pretrained("outputs/diffusers", dtype=torch.float32)

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
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    import torch.distributed as dist

    from megatron_moviegen.hf.diffusers_format import export_pipeline
    from megatron_moviegen.checkpoints.distributed import CheckpointError
    from megatron_moviegen.checkpoints.export import EXPORT_DTYPES
    from megatron_moviegen.checkpoints.tp_shards import ShapeMismatch
    from megatron_moviegen.config.schema import ConfigError

    try:
        out = export_pipeline(args.checkpoint, args.out, args.tae, args.text_encoders, args.text,
                              EXPORT_DTYPES.get(args.dtype), args.max_shard_size)
    except (CheckpointError, ConfigError, ShapeMismatch, FileNotFoundError, FileExistsError, OSError,
            ValueError) as exc:
        print(f"export_diffusers: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(f"exported {args.checkpoint} -> {out} (load with MovieGenVideoPipeline.from_pretrained({str(out)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
