import torch

from megatron_moviegen.parallel import cpu_shim


def test_shim_maps_megatrons_cuda_allocations_to_cpu():
    assert cpu_shim.apply_cpu_shim() is True  # this machine has no CUDA
    from megatron.core.distributed import param_and_grad_buffer
    from megatron.core.pipeline_parallel import p2p_communication, schedules

    for module in (schedules, p2p_communication, param_and_grad_buffer):
        buffer = module.torch.zeros(3, device=module.torch.cuda.current_device())
        assert buffer.device.type == "cpu"
        assert module.torch.zeros([], dtype=torch.int, device="cuda").device.type == "cpu"
        module.torch.cuda.synchronize()  # a no-op, not an error
    # Everything else is the real torch.
    assert schedules.torch.nn is torch.nn and schedules.torch.float32 is torch.float32


def test_shim_is_idempotent_and_inactive_with_cuda(monkeypatch):
    assert cpu_shim.apply_cpu_shim() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_shim.apply_cpu_shim() is False
