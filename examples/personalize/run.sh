#!/usr/bin/env bash
# Personalization you can score, on 2 CPU cores: two bundled clips are two "subjects" (the rabbit, the man on the
# phone), three 2 s windows of each, ALL under one caption; each window's reference image is the first frame of
# another window of its subject (manifest `subject`), encoded by a tiny random CLIP vision tower. A tiny TAE, latents
# normalised and pre-encoded with the reference tokens, the tiny PT2V DiT trained on them (TP=2 + SP on 2 gloo
# ranks), then the one caption sampled with each subject's reference (trained and held-out frames), the other
# subject's and none, each scored against both subjects' clips: the reference, not the caption, must pick who.
# TAE_STEPS / DIT_STEPS shorten it; TAE=<folder> skips the TAE training (it must have seen both clips);
# CONFIG=pt2v_tiny_trainable trains the tower with the DiT (the paper's way) instead of caching a frozen tower's tokens.
# GUIDANCE sets the text guidance scale (default 1.0: none). Results in README.md ("Personalization you can score").
#   bash examples/personalize/run.sh   ->  $OUT/eval/{eval.json,side_by_side.png}
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/common.sh
OUT=${OUT:-outputs/personalize}
TAE_STEPS=${TAE_STEPS:-1000}
DIT_STEPS=${DIT_STEPS:-3000}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
CONFIG=${CONFIG:-pt2v_tiny}  # pt2v_tiny_trainable: the paper's trainable tower, inside the DiT
TOWER="$OUT/vision_tower"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
start=$(date +%s)
mkdir -p "$OUT"

echo "== 1/7 manifest: 3 windows of each subject, one caption for all, references by subject"
python - "$OUT/manifest.jsonl" <<'PY'
import json, sys
from megatron_moviegen.data.bundled import bundled_clips_dir
from megatron_moviegen.utils.io import atomic_write_text
windows = {"rabbit": ("bigbuckbunny.mp4", [0.0, 1.5, 3.0]), "phone": ("carphone_pristine.mp4", [0.0, 1.0, 1.9])}
rows = [{"path": str(bundled_clips_dir() / name), "caption": "a short video clip", "start": start, "subject": subject}
        for subject, (name, starts) in windows.items() for start in starts]
atomic_write_text(sys.argv[1], "".join(json.dumps(row) + "\n" for row in rows))
PY

echo "== 2/7 a tiny random CLIP vision tower (transformers CLIPVisionModel, 32 px, 17 tokens of 32)"
python -c "import sys; from megatron_moviegen.models.vision_tower import save_tiny_vision_tower as s; s(sys.argv[1])" "$TOWER"

if [[ -z "${TAE:-}" ]]; then
    echo "== 3/7 train the tiny TAE on both clips ($TAE_STEPS steps)"
    train_two_clips_tae "$TAE_STEPS" "$OUT/tae"
    TAE="$OUT/tae/checkpoint"
fi

echo "== 4/7 pre-encode raw latents + reference tokens, their statistics, normalised latents"
preencode_normalised "$CONFIG" "$OUT/manifest.jsonl" "$TAE" "$OUT" --set "reference.encoder=$TOWER"

echo "== 5/7 train the PT2V DiT ($DIT_STEPS steps, 2 ranks, TP=2 + SP)"
torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config "$CONFIG" \
    data.shards="$OUT/shards" data.reference.encoder="$TOWER" train.checkpoint_dir="$OUT/checkpoints" \
    train.steps="$DIT_STEPS" train.lr_warmup_steps=$(( DIT_STEPS / 20 )) train.lr_decay_style=cosine \
    train.save_every="$DIT_STEPS" train.log_every=$(( DIT_STEPS / 10 )) train.progress_bar=false
python tools/export_checkpoint.py --checkpoint "$OUT/checkpoints" --out "$OUT/export" > /dev/null

echo "== 6/7 score: the one caption with each reference (trained, held-out, the other subject's, none)"
python tools/evaluate.py --manifest "$OUT/manifest.jsonl" --config "$CONFIG" --tae "$OUT/tae_normalised" \
    --checkpoint "$OUT/export" --text-encoders toy --steps "$SAMPLE_STEPS" --guidance-scale "${GUIDANCE:-1.0}" \
    --out "$OUT/eval" "data.reference.encoder=$TOWER"

echo "== 7/7 one video through the command line: generate --reference-image (a frame of the phone clip at 3.5 s)"
python -m megatron_moviegen.generate --checkpoint "$OUT/export" --tae "$OUT/tae_normalised" --text-encoders toy \
    --reference-image "$(python -c 'from megatron_moviegen.data.bundled import bundled_clips_dir as d; print(d() / "carphone_pristine.mp4")')" \
    --reference-time 3.5 --prompt "a short video clip" --fps 16 --frames 32 --height 64 --width 64 \
    --steps "$SAMPLE_STEPS" --guidance-scale "${GUIDANCE:-1.0}" --output-dir "$OUT/generated"
echo "done in $(( $(date +%s) - start )) s: table $OUT/eval/eval.json, picture $OUT/eval/side_by_side.png"
