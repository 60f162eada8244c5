"""Bring a diffusers MovieGenVideoPipeline folder back: its transformer becomes our export folder (for generate and
tools/export_checkpoint.py) and, with --checkpoint-dir, a weights-only training checkpoint to fine-tune from
(train.load_from=<checkpoint-dir>).

    python tools/import_diffusers.py --pipeline outputs/diffusers --out outputs/imported \\
        --checkpoint-dir outputs/imported_ckpt
    torchrun --nproc-per-node 2 -m megatron_moviegen.train --config tiny train.load_from=outputs/imported_ckpt ...

Errors: one `import_diffusers: error: ...` line, exit 2.
"""

import argparse
import sys
import warnings

from megatron_moviegen.utils.io import byte_size_argument


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a pipeline folder (or its transformer/ folder)")
    parser.add_argument("--out", required=True, help="our export folder to write")
    parser.add_argument("--checkpoint-dir", help="also write a weights-only training checkpoint here")
    parser.add_argument("--max-shard-size", type=byte_size_argument, default="5GB",
                        help="largest file of the export, e.g. 5GB, 500MB")
    parser.add_argument("overrides", nargs="*", help="layout to build the checkpoint under (parallel.*=...)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    import torch.distributed as dist

    from megatron_moviegen.hf.diffusers_format import export_to_training_checkpoint, import_diffusers
    from megatron_moviegen.checkpoints.distributed import CheckpointError
    from megatron_moviegen.checkpoints.tp_shards import ShapeMismatch
    from megatron_moviegen.config.schema import ConfigError
    from megatron_moviegen.parallel.initialize import init_distributed
    from megatron_moviegen.runtime import Runtime

    errors = (CheckpointError, ConfigError, ShapeMismatch, FileNotFoundError, OSError)
    rank, error = 0, None
    try:
        if args.checkpoint_dir:
            rank, _ = init_distributed(Runtime.resolve(distributed_optimizer=False))
        if rank == 0:  # one writer; the other ranks learn whether it worked
            try:
                import_diffusers(args.pipeline, args.out, args.max_shard_size)
            except errors as exc:
                error = str(exc)
        if dist.is_initialized():
            holder = [error]
            dist.broadcast_object_list(holder, src=0)
            error = holder[0]
        if error is None and args.checkpoint_dir:
            step = export_to_training_checkpoint(args.out, args.checkpoint_dir, args.overrides)
    except errors as exc:
        error = str(exc)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if error is not None:
        if rank == 0:
            print(f"import_diffusers: error: {error}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"imported {args.pipeline} -> {args.out}" + (f" and {step}" if args.checkpoint_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
