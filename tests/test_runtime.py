"""The runtime is resolved once: device, dtype, layers and optimizer follow from the machine and the config."""

import pytest
import torch

from megatron_moviegen.runtime import Runtime, rank_and_world_from_env, transformer_engine_installed


def test_cpu_runtime_is_fp32_local_gloo_without_the_distributed_optimizer():
    runtime = Runtime.resolve(cuda=False)
    assert runtime.device == torch.device("cpu") and runtime.params_dtype == torch.float32
    assert runtime.transformer_impl == "local" and runtime.backend == "gloo"
    assert not runtime.distributed_optimizer and not runtime.on_gpu


def test_gpu_runtime_takes_the_local_rank_bf16_and_nccl(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    runtime = Runtime.resolve(cuda=True)
    assert runtime.device == torch.device("cuda", 3) and runtime.params_dtype == torch.bfloat16
    assert runtime.backend == "nccl" and runtime.distributed_optimizer
    assert runtime.transformer_impl == ("transformer_engine" if transformer_engine_installed() else "local")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    assert Runtime.resolve(cuda=True, precision="fp32").device == torch.device("cuda", 5)


def test_transformer_engine_without_cuda_is_refused_with_the_fix():
    with pytest.raises(RuntimeError, match="model.transformer_impl=local"):
        Runtime.resolve(transformer_impl="transformer_engine", cuda=False)


def test_rank_and_world_come_from_torchrun_or_srun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert rank_and_world_from_env() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert rank_and_world_from_env() == (3, 8)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_and_world_from_env() == (1, 2)
