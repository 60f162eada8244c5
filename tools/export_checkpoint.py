"""Convert a training checkpoint (any TP/PP layout) into a single-file export for generation and sharing.

    python tools/export_checkpoint.py --checkpoint outputs/checkpoints --out outputs/export
    torchrun --nproc-per-node 2 tools/export_checkpoint.py --checkpoint ... --out ... parallel.tensor_model_parallel_size=2
"""

import argparse
import sys
import warnings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a step folder, or a checkpoint dir with `latest`")
    parser.add_argument("--out", required=True, help="export folder to write (config.yaml + model.safetensors)")
    parser.add_argument("overrides", nargs="*", help="layout to load under, e.g. parallel.tensor_model_parallel_size=2")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    import torch.distributed as dist

    from megatron_moviegen.parallel.initialize import init_distributed
    from megatron_moviegen.checkpoints.export import export_training_checkpoint
    from megatron_moviegen.runtime import Runtime

    rank, _ = init_distributed(Runtime.resolve(distributed_optimizer=False))
    out = export_training_checkpoint(args.checkpoint, args.out, args.overrides)
    if rank == 0:
        print(f"exported {args.checkpoint} -> {out}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
