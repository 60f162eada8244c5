#!/usr/bin/env bash
# LoRA you can score, on 2 CPU cores: a tiny T2V DiT that knows one subject (the rabbit, trained on it alone) is
# fine-tuned with LoRA (model.lora.rank, every other weight frozen) on another subject (the man on the phone, under
# his own caption); both captions are then sampled from the base and from the merged LoRA export and scored against
# both clips. The LoRA run's checkpoints hold only the adapters (sizes printed). TP=2 + SP on 2 gloo ranks for both
# runs. TAE_STEPS / BASE_STEPS / LORA_STEPS shorten it; TAE=<folder> skips the TAE training (it must have seen both
# clips); RANK / LORA_LR set the adapters' rank and learning rate. Results in README.md ("LoRA on one subject").
#   bash examples/lora/run.sh   ->  $OUT/{base,lora}/eval/{eval.json,side_by_side.png}
set -euo pipefail
cd "$(dirname "$0")/../.."
source examples/common.sh
OUT=${OUT:-outputs/lora}
TAE_STEPS=${TAE_STEPS:-1000}
BASE_STEPS=${BASE_STEPS:-3000}
LORA_STEPS=${LORA_STEPS:-1500}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
RANK=${RANK:-8}
LORA_LR=${LORA_LR:-1e-3}
CONFIG=examples/learn_two_clips/learn_two_clips.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
start=$(date +%s)
mkdir -p "$OUT"

echo "== 1/6 manifests: both clips (the normalisation and the scores), the rabbit alone, the man on the phone alone"
python - "$OUT" <<'PY'
import json, sys
from megatron_moviegen.data.bundled import CAPTIONS, bundled_clips_dir
from megatron_moviegen.utils.io import atomic_write_text
rows = {name: json.dumps({"path": str(bundled_clips_dir() / name), "caption": CAPTIONS[name]}) + "\n"
        for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4")}
atomic_write_text(f"{sys.argv[1]}/both.jsonl", "".join(rows.values()))
atomic_write_text(f"{sys.argv[1]}/rabbit.jsonl", rows["bigbuckbunny.mp4"])
atomic_write_text(f"{sys.argv[1]}/phone.jsonl", rows["carphone_pristine.mp4"])
PY

if [[ -z "${TAE:-}" ]]; then
    echo "== 2/6 train the tiny TAE on both clips ($TAE_STEPS steps)"
    train_two_clips_tae "$TAE_STEPS" "$OUT/tae"
    TAE="$OUT/tae/checkpoint"
fi

echo "== 3/6 latent statistics of both clips, then each subject's normalised latents"
preencode_normalised "$CONFIG" "$OUT/both.jsonl" "$TAE" "$OUT"
for subject in rabbit phone; do
    rm -rf "$OUT/shards_$subject"
    preencode "$CONFIG" "$OUT/$subject.jsonl" "$OUT/tae_normalised" "$OUT/shards_$subject"
done

train() {  # $1: shards, $2: run folder, $3: steps, then overrides
    torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config "$CONFIG" \
        data.shards="$1" train.checkpoint_dir="$2/checkpoints" train.steps="$3" train.global_batch_size=1 \
        train.lr_warmup_steps=$(( $3 / 20 )) train.save_every="$3" train.log_every=$(( $3 / 10 )) "${@:4}"
    python tools/export_checkpoint.py --checkpoint "$2/checkpoints" --out "$2/export" > /dev/null
}
echo "== 4/6 the base T2V DiT on the rabbit alone ($BASE_STEPS steps, 2 ranks, TP=2 + SP)"
train "$OUT/shards_rabbit" "$OUT/base" "$BASE_STEPS"

echo "== 5/6 LoRA rank $RANK on the man on the phone ($LORA_STEPS steps, lr $LORA_LR; the base frozen)"
train "$OUT/shards_phone" "$OUT/lora" "$LORA_STEPS" model.lora.rank="$RANK" train.load_from="$OUT/base/checkpoints" \
    train.lr="$LORA_LR" train.min_lr=$(python -c "print($LORA_LR / 10)")
du -sh "$OUT/base/checkpoints/iter_$(printf %07d "$BASE_STEPS")" "$OUT/lora/checkpoints/iter_$(printf %07d "$LORA_STEPS")"

echo "== 6/6 both captions from the base and from the merged LoRA export, scored against both clips"
for run in base lora; do
    echo "-- $run:"
    python tools/evaluate.py --manifest "$OUT/both.jsonl" --config "$CONFIG" --tae "$OUT/tae_normalised" \
        --checkpoint "$OUT/$run/export" --text-encoders toy --steps "$SAMPLE_STEPS" \
        --out "$OUT/$run/eval"
done
echo "done in $(( $(date +%s) - start )) s: tables $OUT/{base,lora}/eval/eval.json"
