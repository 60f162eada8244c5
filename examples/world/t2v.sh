#!/usr/bin/env bash
# Does the tiny text-to-video DiT follow its captions on scenes it never trained on? Procedural-world scenes of one
# moving shape (data/world.py: 6 colours x 3 shapes x 4 directions x 2 speeds x 2 sizes, still camera, 64 x 64, 2 s at
# 16 fps) are encoded by the world's TAE (examples/world/tae.sh; normalised latents) with the toy text encoders; the
# tiny DiT trains on TRAIN scenes (TP=2 + SP on 2 gloo ranks), whose objects never form one of the 6 held-out
# (colour, shape, direction) triples. Then one video is generated per caption of HELD held-out scenes (each a held-out
# triple) and of HELD training scenes, and read back by the analysers (data/world_analysis.py): the background (the
# frames' median level) and the largest object's colour, shape and direction against the caption's. Chance:
# background 1/3, colour 1/6, shape 1/3, direction 1/4.
#   bash examples/world/t2v.sh   ->  $OUT/scores.json and the table on stdout
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/common.sh
OUT=${OUT:-outputs/world_t2v}
TAE=${TAE:-outputs/world_tae/tae/checkpoint}
TRAIN=${TRAIN:-1200}
HELD=${HELD:-60}
DIT_STEPS=${DIT_STEPS:-3000}
SAMPLE_STEPS=${SAMPLE_STEPS:-30}
CONFIG=examples/world/world_t2v.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
start=$(date +%s)
[[ -f "$TAE/config.json" ]] || { echo "no TAE at $TAE: run examples/world/tae.sh first (or set TAE=)" >&2; exit 2; }
WORLD=(--objects 1 --fps 16 --seconds 2 --height 64 --width 64)

echo "== 1/5 render $TRAIN training and $HELD held-out scenes"
python tools/render_world.py --out "$OUT/train" --count "$TRAIN" "${WORLD[@]}"
python tools/render_world.py --out "$OUT/heldout" --split heldout --count "$HELD" "${WORLD[@]}"

echo "== 2/5 pre-encode: raw latents, their statistics, normalised latents (toy text encoders)"
preencode_normalised "$CONFIG" "$OUT/train/manifest.jsonl" "$TAE" "$OUT" --set shard_size=16

echo "== 3/5 train the tiny DiT ($DIT_STEPS steps, 2 ranks, TP=2 + SP)"
torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config "$CONFIG" data.shards="$OUT/shards" \
    train.checkpoint_dir="$OUT/checkpoints" train.steps="$DIT_STEPS" train.save_every="$DIT_STEPS" \
    train.lr_warmup_steps=$(( DIT_STEPS / 20 )) \
    train.log_every=$(( DIT_STEPS >= 10 ? DIT_STEPS / 10 : 1 ))
python tools/export_checkpoint.py --checkpoint "$OUT/checkpoints" --out "$OUT/export" > /dev/null

echo "== 4/5 generate one video per caption: $HELD held-out scenes and $HELD training scenes"
for split in heldout train; do
    python - "$OUT/$split/manifest.jsonl" "$HELD" > "$OUT/prompts_$split.txt" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()[: int(sys.argv[2])]
print("\n".join(json.loads(line)["caption"] for line in lines))
PY
    python -m megatron_moviegen.generate --checkpoint "$OUT/export" --tae "$OUT/tae_normalised" --text-encoders toy \
        --prompts-file "$OUT/prompts_$split.txt" --frames 32 --height 64 --width 64 --fps 16 \
        --steps "$SAMPLE_STEPS" --output-dir "$OUT/generated_$split" > "$OUT/generate_$split.log"
done

echo "== 5/5 read the videos back"
python - "$OUT" "$HELD" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from megatron_moviegen.data.world import BACKGROUNDS, Scene
from megatron_moviegen.data.world_analysis import find_objects
from megatron_moviegen.utils.video_io import read_frames
out, held = Path(sys.argv[1]), int(sys.argv[2])
rows, scores = {}, {}
for split in ("heldout", "train"):
    truths = [json.loads(l) for l in (out / split / "truth.jsonl").read_text().splitlines()][:held]
    hits = {"background": 0, "colour": 0, "shape": 0, "direction": 0, "all three": 0}
    per_video = []
    for index, truth in enumerate(truths):
        obj = Scene.from_dict(truth["scene"]).objects[0]
        (video,) = (out / f"generated_{split}").glob(f"{index:04d}-*.mp4")
        frames = read_frames(video)
        found = find_objects(frames)
        level = float(np.median(frames))  # the background covers most of the frame
        background = min(BACKGROUNDS, key=lambda name: abs(np.mean(BACKGROUNDS[name]) - level))
        if found:
            colour, track = max(found.items(), key=lambda item: item[1].areas.mean())
            got = {"colour": colour, "shape": track.shape_class(), "direction": track.direction()}
        else:
            got = {"colour": None, "shape": None, "direction": None}
        right = {"colour": got["colour"] == obj.colour, "shape": got["shape"] == obj.shape,
                 "direction": got["direction"] == obj.direction}
        right["all three"] = all(right.values())
        right["background"] = background == Scene.from_dict(truth["scene"]).background
        got["background"] = background
        for key in hits:
            hits[key] += right[key]
        per_video.append({"caption": Scene.from_dict(truth["scene"]).caption(), "read": got, "right": right})
    rows[split] = {key: value / len(truths) for key, value in hits.items()}
    scores[split] = per_video
print("| captions | scenes | background | colour | shape | direction | all three |\n|---|---:|---:|---:|---:|---:|---:|")
for split, label in (("train", "training scenes"), ("heldout", "held-out triples, unseen seeds")):
    r = rows[split]
    print(f"| {label} | {held} | {r['background']:.2f} | {r['colour']:.2f} | {r['shape']:.2f} | {r['direction']:.2f} "
          f"| {r['all three']:.2f} |")
print("| chance | | 0.33 | 0.17 | 0.33 | 0.25 | 0.014 |")
(out / "scores.json").write_text(json.dumps({"rates": rows, "videos": scores}, indent=2))
PY
echo "examples/world/t2v.sh finished in $(( $(date +%s) - start )) s"
