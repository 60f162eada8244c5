"""Every tensor the training loop hands to a collective is made on the runtime's device.

On a GPU cluster the default process group is NCCL, which refuses CPU tensors: a flag or a metric total made
with a bare `torch.tensor(...)` stops training at step 1. This test runs the loop's own collectives with torch's
default device set to "meta": a tensor created without the runtime's device then lands on "meta" and is caught,
so the test fails on CPU exactly where NCCL would fail on a GPU.
"""

import torch
import torch.distributed as dist

from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed


def _collective_devices(rank, world_size, out_dir):
    from megatron_moviegen.conditioning import Conditioning
    from megatron_moviegen.data.loader import Batch
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.training.metrics import MetricsLogger, StepMetrics
    from megatron_moviegen.training.pretrain import PreemptionFlag

    cfg = load_config("tiny", [f"train.checkpoint_dir={out_dir}", "train.progress_bar=false"])
    runtime = Runtime.resolve()
    init_model_parallel(cfg.parallel, runtime)
    seen = []
    real = {name: getattr(dist, name) for name in ("all_reduce", "broadcast", "all_gather_into_tensor")}

    def recording(name):
        def collective(tensor, *args, **kwargs):
            seen.append((name, str(tensor.device)))
            return real[name](tensor, *args, **kwargs)
        return collective

    batch = Batch(latents=torch.zeros(1, 16, 2, 8, 8), conditioning=Conditioning(), bucket="16x64x64",
                  is_image=False, keys=["0"], fps=torch.tensor([16.0]), captions=["a"])
    for name in real:
        setattr(dist, name, recording(name))
    torch.set_default_device("meta")
    try:
        flag = PreemptionFlag()
        flag.agreed(runtime.device)
        flag.restore()
        metrics = MetricsLogger(cfg, runtime, dp_size=world_size, num_microbatches=1)
        loss = metrics.reduce_loss([{"loss": torch.tensor(0.5, device=runtime.device)}])
        metrics.record(StepMetrics(1, loss, 1.0, 1e-4, 0.1, batch, tokens_per_sample=32))
        metrics.close()
    finally:
        torch.set_default_device(None)
        for name, fn in real.items():
            setattr(dist, name, fn)
        destroy()
    return {"seen": seen, "loss": loss}


def test_the_training_loops_collectives_use_the_runtime_device(tmp_path):
    for result in run_distributed(_collective_devices, 2, args=(str(tmp_path),)):
        assert len(result["seen"]) >= 3, result["seen"]  # preemption flag, loss, throughput totals
        assert {device for _, device in result["seen"]} == {"cpu"}, result["seen"]
        assert result["loss"] == 0.5
