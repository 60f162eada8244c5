#!/usr/bin/env bash
# Movie Gen Audio you can score, on 2 CPU cores: two videos with two different soundtracks, the bundled rabbit with
# its own 48 kHz soundtrack and the man on the car phone with speech made by espeak-ng ("Hello, can you hear me? ..."),
# under ONE caption, so only the video can tell the model which sound to make. The tiny audio autoencoder trained on
# both soundtracks, their 2.56 s windows pre-encoded (normalised latents, per-frame features of a tiny random CLIP
# vision tower, the caption), the tiny audio DiT trained on them (TP=2 + SP on 2 gloo ranks), then audio generated
# for each whole video (5.28 s and 4 s: overlapping windows blended with triangle weights) and scored against both
# soundtracks: the generated audio must be closer to the soundtrack of the video it was given. Last, generate-audio
# writes the rabbit's video with its generated sound (mp4, AAC).
# Needs espeak-ng (Debian/Ubuntu: apt-get install espeak-ng). AE_STEPS / DIT_STEPS / SAMPLE_STEPS shorten it;
# AE=<folder> skips the autoencoder training (it must have been trained on both soundtracks); DIT_ARGS adds overrides
# to the DiT's training (e.g. DIT_ARGS="train.lr=3e-4 train.min_lr=3e-5").
#   bash examples/audio/run.sh   ->  $OUT/eval/{eval.json,side_by_side.png}, $OUT/generated/*.mp4
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/audio}
AE_STEPS=${AE_STEPS:-2000}
DIT_STEPS=${DIT_STEPS:-6000}
SAMPLE_STEPS=${SAMPLE_STEPS:-50}
# The README's table was measured with 50 Euler steps of the linear-quadratic schedule, before the paper's midpoint
# solver (64 steps, evenly spaced) became the audio default; SOLVER=midpoint SCHEDULE=linear SAMPLE_STEPS=64 samples as
# the paper does.
SOLVER=${SOLVER:-euler}
SCHEDULE=${SCHEDULE:-linear_quadratic}
TOWER="$OUT/vision_tower"
CAPTION="the sound of this video"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
command -v espeak-ng > /dev/null || { echo "examples/audio needs espeak-ng: apt-get install espeak-ng" >&2; exit 2; }
start=$(date +%s)
mkdir -p "$OUT"
RABBIT=$(python -c 'from megatron_moviegen.data.bundled import bundled_clips_dir as d; print(d() / "bigbuckbunny.mp4")')
PHONE_VIDEO=$(python -c 'from megatron_moviegen.data.bundled import bundled_clips_dir as d; print(d() / "carphone_pristine.mp4")')
PHONE="$(realpath -m "$OUT")/carphone_speech.mp4"  # absolute: manifest paths are relative to the manifest

echo "== 1/8 the man on the phone gets a soundtrack: espeak-ng speech, 4 s, muxed as AAC beside his video"
espeak-ng -v en-us -s 170 -w "$OUT/speech.wav" "Hello, can you hear me? I am calling from the car. The traffic is slow today."
python - "$OUT/speech.wav" "$PHONE_VIDEO" "$PHONE" <<'PY'
import sys
from megatron_moviegen.data.audio import read_audio
from megatron_moviegen.utils.audio_io import mux_audio
speech, video, out = sys.argv[1:]
mux_audio(video, read_audio(speech, 48000, 1, duration_s=4.0), 48000, out)
PY
python - "$OUT/manifest.jsonl" "$RABBIT" "$PHONE" "$CAPTION" <<'PY'
import json, sys
from megatron_moviegen.utils.io import atomic_write_text
out, rabbit, phone, caption = sys.argv[1:]
windows = {rabbit: [0.0, 0.5, 1.0, 1.5, 2.0, 2.7], phone: [0.0, 0.5, 1.0, 1.44]}  # 2.56 s windows
rows = [{"path": path, "caption": caption, "start": start} for path, starts in windows.items() for start in starts]
atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
PY

echo "== 2/8 a tiny random CLIP vision tower (transformers CLIPVisionModel, 32 px, 32 wide)"
python -c "import sys; from megatron_moviegen.models.vision_tower import save_tiny_vision_tower as s; s(sys.argv[1])" "$TOWER"

if [[ -z "${AE:-}" ]]; then
    echo "== 3/8 train the tiny audio autoencoder on both soundtracks ($AE_STEPS steps)"
    python tools/train_audio_ae.py --config audio_ae_tiny "data.audios=[\"$RABBIT\",\"$PHONE\"]" \
        train.steps="$AE_STEPS" train.checkpoint_every="$AE_STEPS" train.log_every=$(( AE_STEPS / 10 )) \
        train.out_dir="$OUT/ae"
    AE="$OUT/ae/checkpoint"
fi

echo "== 4/8 pre-encode raw latents, their per-channel statistics, normalised latents (+ video features, caption)"
preencode() {
    python tools/preencode_latents.py --config audio_tiny --manifest "$OUT/manifest.jsonl" --out "$2" \
        --audio-ae "$1" --text-encoders toy --set "audio.video_encoder=$TOWER" > "$2.log" 2>&1
}
rm -rf "$OUT/shards_raw" "$OUT/shards" "$OUT/ae_normalised"
preencode "$AE" "$OUT/shards_raw"
python tools/latent_stats.py --shards "$OUT/shards_raw" --audio-ae "$AE" --out "$OUT/ae_normalised" > /dev/null
preencode "$OUT/ae_normalised" "$OUT/shards"

echo "== 5/8 train the audio DiT ($DIT_STEPS steps, 2 ranks, TP=2 + SP)"
rm -rf "$OUT/checkpoints" "$OUT/export"  # a new run: an earlier one's checkpoints would be resumed
torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config audio_tiny \
    data.shards="$OUT/shards" data.audio.video_encoder="$TOWER" train.checkpoint_dir="$OUT/checkpoints" \
    train.steps="$DIT_STEPS" train.lr_warmup_steps=$(( DIT_STEPS / 20 )) train.lr_decay_style=cosine \
    train.save_every="$DIT_STEPS" train.log_every=$(( DIT_STEPS / 10 )) train.progress_bar=false ${DIT_ARGS:-}
python tools/export_checkpoint.py --checkpoint "$OUT/checkpoints" --out "$OUT/export" > /dev/null

echo "== 6/8 score: audio for each whole video (one caption) against both soundtracks"
python tools/evaluate.py --manifest "$OUT/manifest.jsonl" --config audio_tiny --audio-ae "$OUT/ae_normalised" \
    --checkpoint "$OUT/export" --text-encoders toy --steps "$SAMPLE_STEPS" --guidance-scale "${GUIDANCE:-1.0}" \
    --audio-solver "$SOLVER" --audio-schedule "$SCHEDULE" --out "$OUT/eval" "data.audio.video_encoder=$TOWER"

echo "== 7/8 the command line: generate-audio for the rabbit's video -> .wav and .mp4 (video + AAC)"
python -m megatron_moviegen.generate_audio --checkpoint "$OUT/export" --audio-ae "$OUT/ae_normalised" \
    --video-encoder "$TOWER" --text-encoders toy --video "$RABBIT" --prompt "$CAPTION" --steps "$SAMPLE_STEPS" \
    --solver "$SOLVER" --schedule "$SCHEDULE" --guidance-scale "${GUIDANCE:-1.0}" --output-dir "$OUT/generated"

echo "== 8/8 the muxed file plays: both streams, equal durations"
python - "$OUT/generated" <<'PY'
import sys
from pathlib import Path
import av
for path in sorted(Path(sys.argv[1]).glob("*.mp4")):
    with av.open(str(path)) as c:
        print(path.name, [(s.type, s.codec_context.name, round(float(s.duration * s.time_base), 3)) for s in c.streams])
PY
echo "done in $(( $(date +%s) - start )) s: table $OUT/eval/eval.json, picture $OUT/eval/side_by_side.png"
