"""Render the procedural world (megatron_moviegen/data/world.py) into a manifest of media: a known truth for
measuring what a model generalizes to (held-out combinations, unseen seeds, an unseen character).

    python tools/render_world.py --out data/world/train --count 2000 --objects 2 --fps 16 --seconds 2
    python tools/render_world.py --out data/world/heldout --split heldout --count 200 --objects 2
    python tools/render_world.py --out data/world/audio --count 500 --seconds 4 --audio      # collision sounds
    python tools/render_world.py --out data/world/edit --count 500 --objects 2 --edits recolour remove flip
    python tools/render_world.py --out data/world/chars --count 500 --characters             # + reference images

Writes <out>/manifest.jsonl (for tools/preencode_latents.py), <out>/truth.jsonl (each scene, its collisions, the
render settings) and the media; a rerun keeps what is there. --fps 0 renders still images (.png).
"""

from __future__ import annotations

import argparse
import sys

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.world import CAMERAS, EDITS, WorldSpec, write_world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = WorldSpec(count=1)
    parser.add_argument("--out", required=True, help="folder to write the manifest, truth and media into")
    parser.add_argument("--count", type=int, required=True, help="scenes")
    parser.add_argument("--split", choices=("train", "heldout"), default=defaults.split)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the world's seed (scene i: its own stream)")
    parser.add_argument("--fps", type=float, default=defaults.fps, help="0: still images")
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--objects", type=int, default=defaults.objects)
    parser.add_argument("--cameras", nargs="+", choices=CAMERAS, default=list(defaults.cameras))
    parser.add_argument("--audio", action="store_true", help="scenes with collisions, their sound muxed in")
    parser.add_argument("--edits", nargs="+", choices=EDITS, default=[], help="source/target pairs by instruction")
    parser.add_argument("--characters", action="store_true", help="a named character in each scene + its reference")
    args = parser.parse_args(argv)
    spec = WorldSpec(args.count, args.split, args.seed, args.fps, args.seconds, args.height, args.width, args.objects,
                     tuple(args.cameras), args.audio, tuple(args.edits), args.characters)
    try:
        manifest = write_world(args.out, spec)
    except ConfigError as exc:
        print(f"render_world: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {manifest} ({args.count} {args.split} scenes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
