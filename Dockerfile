# megatron_moviegen on NVIDIA's PyTorch container, which already carries CUDA, cuDNN, NCCL, TransformerEngine,
# apex, flash-attn and DALI. We add Megatron-Core (pinned: parallel/cpu_shim.py and the checkpoint code are
# tested against 0.16.x), the data/text stack, and this package, without touching the container's torch.
#
#   docker build -t megatron-moviegen .
#   enroot import -o megatron-moviegen.sqsh dockerd://megatron-moviegen   # the file slurm/*.sh give pyxis
FROM nvcr.io/nvidia/pytorch:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1

WORKDIR /workspace/megatron_moviegen
COPY pyproject.toml README.md ./
COPY megatron_moviegen ./megatron_moviegen
COPY tools ./tools
COPY examples ./examples
COPY slurm ./slurm
COPY benchmarks ./benchmarks

# --no-build-isolation + a constraint on the container's torch keeps pip from replacing it.
RUN python -c "import torch; print(torch.__version__)" > /tmp/torch-version \
 && echo "torch==$(cat /tmp/torch-version)" > /tmp/constraints.txt \
 && pip install -c /tmp/constraints.txt "megatron-core>=0.16.0,<0.17" \
 && pip install -c /tmp/constraints.txt --no-build-isolation -e ".[data,deepspeed]" \
 && python -c "import transformer_engine, megatron.core, megatron_moviegen; print('ok')"

CMD ["bash"]
