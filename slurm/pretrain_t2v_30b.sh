#!/bin/bash
# Movie Gen 30B text-to-image/video pretraining on H100 nodes, in a container (pyxis/enroot).
#
#   sbatch slurm/pretrain_t2v_30b.sh                       # stage 3 (t2iv_768) by default
#   RECIPE=t2i_256 sbatch --nodes 128 slurm/pretrain_t2v_30b.sh train.steps=1000
#   bash slurm/pretrain_t2v_30b.sh --dry-run               # print layout + per-GPU memory estimate, launch nothing
#
# Layout (recipe t2iv_768, 73,728-token samples): TP=4 with sequence parallelism, CP=2, PP=1, full activation
# recomputation, distributed optimizer; ~54 GiB/GPU estimated (see --dry-run). The job resumes from
# train.checkpoint_dir/latest; SIGUSR1 arrives 5 minutes before the time limit, the job saves and exits,
# and --requeue starts it again from that checkpoint.
#SBATCH --job-name=moviegen-t2v-30b
#SBATCH --nodes=64
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

RECIPE=${RECIPE:-t2iv_768}
CONTAINER_IMAGE=${CONTAINER_IMAGE:-megatron-moviegen:latest}   # built from ./Dockerfile
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

export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_PORT=${MASTER_PORT:-29500}
export CUDA_DEVICE_MAX_CONNECTIONS=1           # TP/SP communication overlap in Megatron-Core
export NCCL_NVLS_ENABLE=0
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
mkdir -p logs

# srun forwards SIGUSR1 (from --signal=B:USR1) to every task; each rank saves at the end of its step.
srun --kill-on-bad-exit=1 \
    --container-image="$CONTAINER_IMAGE" --container-mounts="$CONTAINER_MOUNTS" --container-workdir="$REPO" \
    python -m megatron_moviegen.train --config "$RECIPE" "$@" &
wait $!
