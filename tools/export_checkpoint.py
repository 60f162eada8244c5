"""Convert a training checkpoint (any TP/PP layout) into an export for generation and sharing: bf16 (or
--dtype fp32) safetensors files of at most --max-shard-size each, with a model.safetensors.index.json.

    python tools/export_checkpoint.py --checkpoint outputs/checkpoints --out outputs/export
    # 30B: load under a sharded layout so that no rank builds the whole float32 model (117 GB)
    torchrun --nproc-per-node 8 tools/export_checkpoint.py --checkpoint ... --out ... \\
        parallel.tensor_model_parallel_size=4 parallel.pipeline_model_parallel_size=2
"""

import argparse
import sys
import warnings

from megatron_moviegen.utils.io import byte_size_argument


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a step folder, or a checkpoint dir with `latest`")
    parser.add_argument("--out", required=True, help="export folder to write (config.yaml, index, safetensors files)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="dtype of the exported tensors")
    parser.add_argument("--max-shard-size", type=byte_size_argument, default="5GB",
                        help="largest file, e.g. 5GB, 500MB, 2GiB")
    parser.add_argument("--ema", action="store_true",
                        help="export the EMA of the weights (train.ema_decay) saved with the checkpoint; run under "
                             "the training's TP and PP sizes")
    parser.add_argument("overrides", nargs="*", help="layout to load under, e.g. parallel.tensor_model_parallel_size=2")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    import torch.distributed as dist

    from megatron_moviegen.checkpoints.export import EXPORT_DTYPES, export_training_checkpoint
    from megatron_moviegen.parallel.initialize import init_distributed
    from megatron_moviegen.runtime import Runtime

    from megatron_moviegen.checkpoints.distributed import CheckpointError
    from megatron_moviegen.config.schema import ConfigError

    rank, _ = init_distributed(Runtime.resolve(distributed_optimizer=False))
    try:
        out = export_training_checkpoint(args.checkpoint, args.out, args.overrides, EXPORT_DTYPES[args.dtype],
                                         args.max_shard_size, ema=args.ema)
    except (CheckpointError, ConfigError, FileNotFoundError) as exc:
        if rank == 0:
            print(f"export_checkpoint: error: {exc}", file=sys.stderr)
        return 2
    finally:
        dist.destroy_process_group()
    if rank == 0:
        print(f"exported {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
