"""Average several DiT models of one config (Movie Gen SFT: model averaging) into one export folder.

    python tools/average_checkpoints.py --out /exports/sft_avg /exports/sft_a /exports/sft_b
    python tools/average_checkpoints.py --out /exports/sft_avg /checkpoints/sft_a /checkpoints/sft_b/step_0002000

Each input is an export folder (config.yaml + model.safetensors) or a training checkpoint (a step folder, or a
checkpoint dir with `latest`), which is exported first into a temporary folder on this one process.
"""

import argparse
import sys
import tempfile
import warnings
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="export folders or training checkpoints, same model config")
    parser.add_argument("--out", required=True, help="export folder to write")
    parser.add_argument("--weights", type=float, nargs="*", help="one weight per input, summing to 1 (default equal)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron_moviegen.checkpoints.averaging import average_exports
    from megatron_moviegen.checkpoints.export import CONFIG_NAME

    with tempfile.TemporaryDirectory(prefix="average_") as scratch:
        folders = []
        for index, item in enumerate(args.inputs):
            if (Path(item) / CONFIG_NAME).is_file():
                folders.append(item)
                continue
            from megatron_moviegen.checkpoints.export import export_training_checkpoint
            from megatron_moviegen.parallel.initialize import init_distributed
            from megatron_moviegen.runtime import Runtime

            init_distributed(Runtime.resolve(distributed_optimizer=False))
            folders.append(str(export_training_checkpoint(item, Path(scratch) / f"input{index}")))
        out = average_exports(folders, args.out, args.weights)
    print(f"averaged {len(folders)} models -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
