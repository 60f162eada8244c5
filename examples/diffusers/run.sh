#!/usr/bin/env bash
# A diffusers user's script (examples/diffusers/run.py) on a Movie Gen export.
#   bash examples/diffusers/run.sh [PIPELINE_FOLDER [LORA_FOLDER]]
# Without folders it makes the quickstart's model (examples/quickstart/run.sh, if $OUT/quickstart has no checkpoint),
# a 10-step LoRA fine-tune of it (rank 4), the diffusers pipeline folder and the adapters' LoRA file, then runs
# run.py on them. Needs the [hf] extra (diffusers, peft, imageio + imageio-ffmpeg for export_to_video).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/diffusers}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
PIPELINE=${1:-}
LORA=${2:-}
if [[ -z "$PIPELINE" ]]; then
    Q="$OUT/quickstart"
    if [[ ! -f "$Q/checkpoints/latest" ]]; then
        echo "== the quickstart's model ($Q)"
        OUT="$Q" bash examples/quickstart/run.sh > "$OUT.quickstart.log" 2>&1
    fi
    if [[ ! -f "$OUT/lora/checkpoints/latest" ]]; then
        echo "== a 10-step LoRA (rank 4) of it"
        torchrun --standalone --nproc-per-node 2 -m megatron_moviegen.train --config quickstart \
            train.checkpoint_dir="$OUT/lora/checkpoints" data.shards="$Q/shards" train.load_from="$Q/checkpoints" \
            model.lora.rank=4 train.steps=10 train.save_every=10 train.lr=1e-3 > "$OUT.lora.log" 2>&1
    fi
    PIPELINE="$OUT/pipeline" LORA="$OUT/lora/diffusers_lora"
    if [[ ! -f "$PIPELINE/model_index.json" ]]; then
        echo "== export the diffusers pipeline and the LoRA file"
        python tools/export_diffusers.py --checkpoint "$Q/export" --out "$PIPELINE" --tae toy-tae --text-encoders toy
        python tools/export_diffusers.py --lora --checkpoint "$OUT/lora/checkpoints" --out "$LORA"
    fi
fi
echo "== run.py"
python examples/diffusers/run.py "$PIPELINE" "$LORA" "$OUT/videos"
