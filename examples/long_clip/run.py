"""Long-prompt CLIP fine-tuning on CPU, before vs after: `python examples/long_clip/run.py [--work DIR]`.

1. A tiny CLIP (text/toy_clip.py) is pretrained at 77 positions on short captions of coloured shapes: the stand-in
   for the pretrained MetaCLIP.
2. Its text tower is stretched to 256 positions (`extend_clip_context`) and fine-tuned with the `long_clip_tiny`
   recipe (text/long_clip.py, through its manifest of PNGs) on long captions: >= 78 tokens of filler shared by every
   caption, then the words that describe the image.
3. Top-1 retrieval (image -> text and text -> image among all pairs of a set) on held-out pairs: new images, and
   (colour, shape) combinations never trained on, before and after. Printed as a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

from megatron_moviegen.text.long_clip import (LongClipModelConfig, finetune_long_clip, load_long_clip,
                                              load_long_clip_config, retrieval_accuracy)
from megatron_moviegen.text.toy_clip import HELD_OUT, SEEN, draw_pairs, pretrain, retrieval_set, save_clip

DRAWS = 5  # evaluation sets per row, each one new image per (colour, shape, place); the table shows their mean


def write_pairs(folder: Path, manifest: Path, images: torch.Tensor, captions: list[str]) -> None:
    """PNGs in `folder` and a .jsonl manifest of (path, caption) beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        Image.fromarray(image.numpy()).save(folder / f"{i:05d}.png")
        rows.append(json.dumps({"path": f"{folder.name}/{i:05d}.png", "caption": caption}))
    manifest.write_text("\n".join(rows) + "\n")


def evaluation_sets(seed: int) -> dict[str, list[tuple[torch.Tensor, list[str]]]]:
    """Row name -> DRAWS sets of (images, captions), drawn once so every model sees the same pairs."""
    generator = torch.Generator().manual_seed(seed)
    rows = {}
    for combos, which in ((HELD_OUT, "held-out combos"), (SEEN, "seen combos, new images")):
        for kind in ("long", "short"):
            rows[f"{kind} captions, {which} (1 of {4 * len(combos)})"] = [
                retrieval_set(combos, kind, generator) for _ in range(DRAWS)]
    return rows


def scores(path: str, max_length: int, sets: dict) -> dict[str, tuple[float, float]]:
    """Row -> (image->text, text->image) top-1, mean over the draws, of the CLIPModel at `path`."""
    clip = load_long_clip(LongClipModelConfig(path=path, max_length=max_length), torch.device("cpu"))
    out = {}
    for row, draws in sets.items():
        accuracies = [retrieval_accuracy(clip, clip.pixels(images), captions) for images, captions in draws]
        out[row] = tuple(sum(a[k] for a in accuracies) / len(accuracies) for k in ("image_to_text", "text_to_image"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="outputs/long_clip_example", help="folder for the models and pairs")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--train-pairs", type=int, default=4096)
    parser.add_argument("overrides", nargs="*", help="long_clip_tiny overrides, e.g. train.steps=200")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: more threads only wait on each other
    work = Path(args.work)
    started = time.time()
    pretrained = work / "pretrained_77"
    if not pretrained.exists():
        save_clip(pretrained, *pretrain(args.pretrain_steps))
    generator = torch.Generator().manual_seed(1)
    write_pairs(work / "train", work / "train.jsonl", *draw_pairs(SEEN, args.train_pairs, "long", generator))
    write_pairs(work / "held_out", work / "held_out.jsonl", *retrieval_set(HELD_OUT, "long", generator))
    cfg = load_long_clip_config("long_clip_tiny", [
        f"model.path={pretrained}", f"data.manifest={work / 'train.jsonl'}",
        f"data.eval_manifest={work / 'held_out.jsonl'}", f"train.out_dir={work / 'finetune'}", *args.overrides])
    finetune_long_clip(cfg)
    sets = evaluation_sets(seed=2)
    models = {"77 positions (truncated)": scores(str(pretrained), 77, sets),
              "stretched to 256, not fine-tuned": scores(str(pretrained), 256, sets),
              "fine-tuned at 256": scores(str(work / "finetune" / "checkpoint"), 256, sets)}
    print(f"\ntop-1 retrieval, image->text / text->image, mean of {DRAWS} draws "
          f"({time.time() - started:.0f} s in all)")
    print("| pairs (chance) | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    for row in sets:
        print(f"| {row} | " + " | ".join(f"{m[row][0]:.2f} / {m[row][1]:.2f}" for m in models.values()) + " |")


if __name__ == "__main__":
    main()
