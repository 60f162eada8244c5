"""Megatron's fused kernels are switched on where the GPU build has them, and off where Megatron would refuse them."""

import importlib.util

import torch

from megatron_moviegen.models.dit import kernel_fusions
from megatron_moviegen.recipes import load_config
from megatron_moviegen.runtime import Runtime


def _runtime(device: str, impl: str) -> Runtime:
    return Runtime(device=torch.device(device), params_dtype=torch.bfloat16, transformer_impl=impl,
                   distributed_optimizer=device == "cuda")


def test_gpu_with_te_fuses_wgrad_accumulation_and_swiglu():
    video = load_config("t2v_30b").model
    assert kernel_fusions(_runtime("cuda", "transformer_engine"), video) == {
        "gradient_accumulation_fusion": True, "bias_activation_fusion": True}


def test_the_gelu_audio_model_gets_no_activation_fusion():
    audio = load_config("audio_13b").model  # GELU without bias: Megatron's MLP asserts on bias_gelu fusion
    assert kernel_fusions(_runtime("cuda", "transformer_engine"), audio)["bias_activation_fusion"] is False


def test_cpu_and_gpu_without_te_or_apex_fuse_nothing():
    video = load_config("t2v_30b").model
    assert not any(kernel_fusions(_runtime("cpu", "local"), video).values())
    apex = importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None
    assert kernel_fusions(_runtime("cuda", "local"), video)["gradient_accumulation_fusion"] is apex
