#!/bin/bash
# Pre-encode videos + captions into latent shards (TAE + UL2/MetaCLIP/ByT5), one rank per GPU. Each rank
# writes its own shards; rerunning after a crash or preemption skips finished shards. 2 minutes before the
# time limit SLURM sends SIGUSR1 to this batch shell (B:); the trap stops the srun step (unfinished shards
# are redone on the next run) and requeues the job, which carries on with the shards still missing.
#
#   MANIFEST=/data/clips.jsonl OUT=/data/latents_768 TAE=/models/tae sbatch slurm/preencode.sh
#   RECIPE=audio_13b MANIFEST=/data/sounds.jsonl OUT=/data/audio_latents AUDIO_AE=/models/audio_ae \
#       sbatch slurm/preencode.sh --set audio.video_encoder=/models/metaclip-h14     # Movie Gen Audio
#   DECODER=dali-gpu MANIFEST=... sbatch slurm/preencode.sh     # decode on each rank's GPU (NVDEC) with DALI
#   bash slurm/preencode.sh --dry-run      # bucket counts and rejects, nothing encoded (runs here)
#
# DECODER: pyav (default; NUM_WORKERS decode processes per rank, 8 by default) or dali-gpu / dali-cpu (in-process,
# no decode workers).
#SBATCH --job-name=moviegen-preencode
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

RECIPE=${RECIPE:-t2iv_768}
MANIFEST=${MANIFEST:?set MANIFEST to a .jsonl/.csv manifest or a folder of media with .txt captions}
OUT=${OUT:?set OUT to the shard folder}
if [[ -n "${AUDIO_AE:-}" ]]; then  # an audio recipe (RECIPE=audio_13b): the audio autoencoder, T5
    ENCODER=(--audio-ae "$AUDIO_AE")
    TEXT_ARGS=${TEXT_ARGS:-"t5.path=/models/t5-base"}
else
    ENCODER=(--tae "${TAE:?set TAE to a TAE folder (TAE.save_pretrained), or AUDIO_AE for an audio recipe}")
    TEXT_ARGS=${TEXT_ARGS:-"ul2.path=/models/ul2 metaclip.path=/models/metaclip byt5.path=/models/byt5-large"}
fi
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/data:/data,/models:/models}
REPO=${REPO:-/workspace/megatron_moviegen}
DECODER=${DECODER:-pyav}
case "$DECODER" in
    pyav) DECODE_ARGS=(--set "decoder=pyav" --num-workers "${NUM_WORKERS:-8}") ;;
    dali-gpu|dali-cpu) DECODE_ARGS=(--set "decoder=$DECODER" --num-workers 0) ;;
    *) echo "DECODER: got '$DECODER', need pyav, dali-gpu or dali-cpu" >&2; exit 2 ;;
esac

ARGS=(--config "$RECIPE" --manifest "$MANIFEST" --out "$OUT" "${ENCODER[@]}" --text-encoders paper --text $TEXT_ARGS)
if [[ "${1:-}" == "--dry-run" ]]; then
    cd "$(dirname "$0")/.."
    python tools/preencode_latents.py "${ARGS[@]}" --dry-run "${@:2}"
    exit 0
fi

# pyxis takes a squashfs file or a registry image ([USER@][REGISTRY#]IMAGE[:TAG], docker://, dockerd://); a bare
# docker tag such as megatron-moviegen:latest is looked up on Docker Hub and fails on every node. README: On a cluster.
CONTAINER_IMAGE=${CONTAINER_IMAGE:-${SLURM_SUBMIT_DIR:-$PWD}/megatron-moviegen.sqsh}
if [[ "$CONTAINER_IMAGE" == *.sqsh || "$CONTAINER_IMAGE" == *.squashfs ]]; then
    if [[ ! -f "$CONTAINER_IMAGE" ]]; then
        echo "CONTAINER_IMAGE: no file $CONTAINER_IMAGE; build it (docker build -t megatron-moviegen . &&" \
             "enroot import -o $CONTAINER_IMAGE dockerd://megatron-moviegen) or set CONTAINER_IMAGE" >&2
        exit 2
    fi
elif [[ "$CONTAINER_IMAGE" != *"#"* && "$CONTAINER_IMAGE" != docker://* && "$CONTAINER_IMAGE" != dockerd://* ]]; then
    echo "CONTAINER_IMAGE: got '$CONTAINER_IMAGE', need an existing .sqsh file or a registry image" \
         "(REGISTRY#IMAGE[:TAG], e.g. nvcr.io#nvidia/pytorch:25.10-py3)" >&2
    exit 2
fi
# srun relays SIGUSR1 to its tasks, whose default action is to exit: finished shards stay, the rest are redone.
signalled=0 step=
forward_usr1() {
    signalled=1
    echo "SIGUSR1: stopping the pre-encoding step"
    kill -USR1 "$step" 2>/dev/null || true
}
trap forward_usr1 USR1
srun --kill-on-bad-exit=1 \
    --container-image="$CONTAINER_IMAGE" --container-mounts="$CONTAINER_MOUNTS" --container-workdir="$REPO" \
    python tools/preencode_latents.py "${ARGS[@]}" "${DECODE_ARGS[@]}" "$@" &
step=$!
while kill -0 "$step" 2>/dev/null; do wait "$step" || true; done
status=0
wait "$step" || status=$?
if (( signalled )); then
    echo "requeueing job $SLURM_JOB_ID to encode the remaining shards"
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
