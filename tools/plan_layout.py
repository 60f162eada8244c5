"""Print the resolved parallel layout of a recipe on N GPUs and its per-GPU memory estimate. Launches nothing. An
audio recipe (data.audio) is planned for its longest window; --frames/--height/--width size a video sample.

    python tools/plan_layout.py --config t2iv_768 --gpus 6144
    python tools/plan_layout.py --config audio_13b --gpus 512
    python tools/plan_layout.py --config t2iv_768 --gpus 512 model.recompute_granularity=null
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--gpus", type=int, required=True, help="world size (nodes x GPUs per node)")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="per-GPU memory (H100: 80, H200: 141)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.planning.layout import format_plan, plan_layout

    cfg = load_config(args.config, args.overrides)
    plan = plan_layout(cfg, args.gpus, args.frames, args.height, args.width)
    print(format_plan(plan, cfg, args.gpu_memory_gb * 1e9 / 2**30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
