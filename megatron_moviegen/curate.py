"""Raw videos -> single-shot clips with scores -> one training manifest per stage: `moviegen-curate` (the console
script), `python -m megatron_moviegen.curate` or `tools/curate.py`.

    moviegen-curate raw_videos/ --out curated/                       # the default recipe
    moviegen-curate raw_videos/ --out curated/ --recipe small thresholds.max_text=0.05
    torchrun --nproc-per-node 8 -m megatron_moviegen.curate raw_videos/ --out curated/   # sharded over ranks

Each rank analyses every WORLD_SIZE-th video and writes one result per video; a re-run skips videos already done
(after a kill, or with new thresholds: only the merge runs again). Rank 0 waits for the others, then writes
curated/manifest.<stage>.jsonl (pre-encoding's input), clips.jsonl, rejected.jsonl, funnel.json and report.png.
"""

from __future__ import annotations

import argparse
import json
import sys

from megatron_moviegen.config.schema import ConfigError, to_yaml
from megatron_moviegen.curation.config import load_curation_config
from megatron_moviegen.curation.pipeline import curate
from megatron_moviegen.runtime import rank_and_world_from_env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Curate raw videos into single-shot training clips.")
    parser.add_argument("inputs", nargs="+", help="video files or folders searched for videos, and section.field=value "
                                                  "overrides of the recipe")
    parser.add_argument("--out", required=True, help="output folder (results, manifests, report)")
    parser.add_argument("--recipe", default="default", help="a configs/curation recipe name or a YAML path")
    parser.add_argument("--wait-s", type=float, default=3600.0, help="how long rank 0 waits for the other ranks")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    args = parser.parse_intermixed_args(argv)  # inputs and overrides before and after the options
    args.overrides = [a for a in args.inputs if "=" in a]
    args.inputs = [a for a in args.inputs if "=" not in a]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_curation_config(args.recipe, args.overrides)
    except ConfigError as exc:
        print(f"curate: error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    rank, world = rank_and_world_from_env()
    try:
        funnels = curate(args.inputs, args.out, config, rank, world, args.wait_s)
    except (FileNotFoundError, ValueError, TimeoutError) as exc:  # TimeoutError: other ranks' results never came
        print(f"curate: error: {exc}", file=sys.stderr)
        return 2
    if funnels is not None:
        print(json.dumps(funnels, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
