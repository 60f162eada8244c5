"""Print the DiT's parameter counts, token count and training FLOPs for a video size.

    python tools/model_summary.py --config t2v_30b --frames 256 --height 768 --width 768 --json
"""

import argparse
import json
import warnings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="t2v_30b", help="recipe name or YAML path")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.num_layers=4")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.planning.summary import format_table, summarize

    summary = summarize(load_config(args.config, args.overrides), args.frames, args.height, args.width)
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))


if __name__ == "__main__":
    main()
