#!/usr/bin/env bash
# Learning you can see, on 2 CPU cores: a tiny TAE trained on two bundled clips, their latents normalised and
# pre-encoded, the tiny DiT trained on them (TP=2 + SP on 2 gloo ranks), then each caption sampled and compared
# with its own clip, the other clip and the TAE's own reconstruction (the ceiling). COMPARE_RAW=1 (the default)
# also trains the same DiT on unnormalised latents. Measured: 70 min wall (42 min CPU) on 2 cores that other jobs
# shared, the TAE taking 37 of them; TAE_STEPS / DIT_STEPS / COMPARE_RAW=0 shorten it. Results: README.md.
# PRECISIONS="fp32 bf16" trains and samples the DiT on normalised latents once per precision (bf16: the weights and
# compute a GPU recipe uses, float32 main params in the optimizer), the bf16 run into $OUT/normalised_bf16.
#   bash examples/learn_two_clips/run.sh   ->  $OUT/normalised/eval/{eval.json,side_by_side.png} (and $OUT/raw/eval)
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/common.sh
OUT=${OUT:-outputs/learn_two_clips}
TAE_STEPS=${TAE_STEPS:-1000}
DIT_STEPS=${DIT_STEPS:-3000}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
COMPARE_RAW=${COMPARE_RAW:-1}
PRECISIONS=${PRECISIONS:-fp32}
CONFIG=examples/learn_two_clips/learn_two_clips.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
start=$(date +%s)
mkdir -p "$OUT"

echo "== 1/6 manifest: the rabbit and the man on the phone"
python - "$OUT/manifest.jsonl" <<'PY'
import json, sys
from megatron_moviegen.data.bundled import CAPTIONS, bundled_clips_dir
from megatron_moviegen.utils.io import atomic_write_text
names = ("bigbuckbunny.mp4", "carphone_pristine.mp4")
atomic_write_text(sys.argv[1], "".join(json.dumps({"path": str(bundled_clips_dir() / n), "caption": CAPTIONS[n]})
                                       + "\n" for n in names))
PY

echo "== 2/6 train the tiny TAE on both clips ($TAE_STEPS steps)"
train_two_clips_tae "$TAE_STEPS" "$OUT/tae"
TAE="$OUT/tae/checkpoint"

echo "== 3/6 pre-encode raw latents, their per-channel statistics, pre-encode normalised latents"
preencode_normalised "$CONFIG" "$OUT/manifest.jsonl" "$TAE" "$OUT"

run_folder() {  # $1: precision -> the folder of the DiT on normalised latents
    if [[ "$1" == fp32 ]]; then echo "$OUT/normalised"; else echo "$OUT/normalised_$1"; fi
}
train_dit() {  # $1: shards, $2: run folder, $3: precision
    torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config "$CONFIG" train.precision="${3:-fp32}" \
        data.shards="$1" train.checkpoint_dir="$2/checkpoints" train.steps="$DIT_STEPS" \
        train.lr_warmup_steps=$(( DIT_STEPS / 20 )) train.save_every="$DIT_STEPS" train.log_every=$(( DIT_STEPS / 10 ))
    python tools/export_checkpoint.py --checkpoint "$2/checkpoints" --out "$2/export" > /dev/null
}
for precision in $PRECISIONS; do
    echo "== 4/6 train the DiT on normalised latents ($DIT_STEPS steps, 2 ranks, TP=2 + SP, $precision)"
    train_dit "$OUT/shards" "$(run_folder "$precision")" "$precision"
done
if [[ "$COMPARE_RAW" == 1 ]]; then
    echo "== 4b/6 the same DiT on raw latents, for comparison"
    train_dit "$OUT/shards_raw" "$OUT/raw"
fi

echo "== 5/6 evaluate: TAE ceiling, each caption's sample vs its clip and vs the other clip"
evaluate() {  # $1: TAE folder, $2: run folder, $3: precision
    python tools/evaluate.py --manifest "$OUT/manifest.jsonl" --config "$CONFIG" --tae "$1" \
        --checkpoint "$2/export" --text-encoders toy --steps "$SAMPLE_STEPS" --precision "${3:-fp32}" --out "$2/eval"
}
for precision in $PRECISIONS; do
    echo "-- $precision:"
    evaluate "$OUT/tae_normalised" "$(run_folder "$precision")" "$precision"
done
if [[ "$COMPARE_RAW" == 1 ]]; then
    echo "-- raw latents:"
    evaluate "$TAE" "$OUT/raw"
fi

echo "== 6/6 done in $(( $(date +%s) - start )) s"
echo "  table:  $OUT/normalised/eval/eval.json    picture: $OUT/normalised/eval/side_by_side.png"
echo "  losses: $OUT/normalised/checkpoints/metrics.jsonl    TAE: $OUT/tae/metrics.jsonl"
