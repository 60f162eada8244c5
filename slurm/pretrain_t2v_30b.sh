#!/bin/bash
# Movie Gen 30B text-to-image/video pretraining on H100 nodes, in a container (pyxis/enroot).
#
#   sbatch slurm/pretrain_t2v_30b.sh                       # stage 3 (t2iv_768), ./megatron-moviegen.sqsh
#   RECIPE=t2i_256 sbatch --nodes 128 slurm/pretrain_t2v_30b.sh train.steps=1000
#   bash slurm/pretrain_t2v_30b.sh --dry-run               # print layout + per-GPU memory estimate, launch nothing
#
# Layout (recipe t2iv_768, 73,728-token samples): TP=4 with sequence parallelism, CP=2, PP=1, full activation
# recomputation, distributed optimizer; ~54 GiB/GPU estimated (see --dry-run). The job resumes from
# train.checkpoint_dir/latest. 10 minutes before the time limit SLURM sends SIGUSR1 to this batch shell only
# (B:); the trap below forwards it to the srun step, every rank saves at the end of its step and exits 0,
# and the script requeues the job (--requeue alone does not bring back a job that hit its time limit).
# The lead must cover the step under way when the signal lands plus one save, or the time limit kills the save.
# Both are measured: train.checkpoint_dir/metrics.jsonl holds each step's `step_s` and each save's `save_s` (the
# console prints "saved checkpoint ... in N s"); `grep save_s metrics.jsonl | tail -3`. Set the lead above the
# largest step_s + save_s with a margin, e.g. sbatch --signal=B:USR1@900. 600 s is sized for t2iv_768 on 512 GPUs:
# ~5e19 FLOPs a step at ~40% MFU is ~4 minutes, and a save of its sharded 30B optimizer state a few more.
# The log, %x-%j.out in the submit folder (which exists when SLURM opens it), is appended to by a requeued job.
#SBATCH --job-name=moviegen-t2v-30b
#SBATCH --nodes=64
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
set -euo pipefail

RECIPE=${RECIPE:-t2iv_768}
CONTAINER_MOUNTS=${CONTAINER_MOUNTS:-/data:/data,/checkpoints:/checkpoints}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODES=${SLURM_JOB_NUM_NODES:-${NODES:-64}}
REPO=${REPO:-/workspace/megatron_moviegen}

if [[ "${1:-}" == "--dry-run" ]]; then
    shift
    cd "$(dirname "$0")/.."
    python tools/plan_layout.py --config "$RECIPE" --gpus $(( NODES * GPUS_PER_NODE )) "$@"
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
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}
export CUDA_DEVICE_MAX_CONNECTIONS=1           # TP/SP communication overlap in Megatron-Core
export NCCL_NVLS_ENABLE=0
export TORCH_NCCL_AVOID_RECORD_STREAMS=1

# srun relays the signals it receives to its tasks, so SIGUSR1 sent to srun reaches every rank.
signalled=0 step=
forward_usr1() {
    signalled=1
    echo "SIGUSR1: asking the training step to save and exit"
    kill -USR1 "$step" 2>/dev/null || true
}
trap forward_usr1 USR1
srun --kill-on-bad-exit=1 \
    --container-image="$CONTAINER_IMAGE" --container-mounts="$CONTAINER_MOUNTS" --container-workdir="$REPO" \
    python -m megatron_moviegen.train --config "$RECIPE" "$@" &
step=$!
# The trap cuts `wait` short; keep waiting while the ranks write their checkpoint.
while kill -0 "$step" 2>/dev/null; do wait "$step" || true; done
status=0
wait "$step" || status=$?
if (( signalled && status == 0 )); then
    echo "checkpoint saved; requeueing job $SLURM_JOB_ID to resume from it"
    scontrol requeue "$SLURM_JOB_ID"
elif (( signalled )); then
    echo "the training step exited with $status after SIGUSR1; not requeueing (fix the error, then resubmit)" >&2
fi
exit "$status"
