"""AdamW behind Megatron's optimizer interface, and its learning-rate schedule.

On GPU this is Megatron's own `get_megatron_optimizer` (DistributedOptimizer when configured). Those
optimizers are CUDA-only (fused kernels, CUDA grad clipping), so on CPU we use Megatron's own classes with a
grad-norm clip that runs on CPU tensors (the norm covers each parameter once over the model-parallel group,
exactly as Megatron counts it):
- fp32 weights: `CPUOptimizer`, Megatron's FP32Optimizer;
- bf16 weights: `CPUMixedPrecisionOptimizer`, Megatron's Float16OptimizerWithFloat16Params: AdamW steps float32
  main copies of the weights with the float32 grads DDP accumulated (grad_reduce_in_fp32), then copies them
  back to the bf16 weights, as on GPU. Its main params are saved in checkpoints, so a resumed run continues
  from the same float32 values, not from their bf16 rounding.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from megatron.core import tensor_parallel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer import (
    Float16OptimizerWithFloat16Params,
    FP32Optimizer,
    MixedPrecisionOptimizer,
)
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_moviegen.config import ConfigError
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.training.config import TrainConfig


def _optimizer_config(train: TrainConfig, use_distributed_optimizer: bool, bf16: bool) -> OptimizerConfig:
    return OptimizerConfig(
        optimizer="adam",
        lr=train.lr,
        min_lr=train.min_lr,
        weight_decay=train.weight_decay,
        adam_beta1=train.adam_beta1,
        adam_beta2=train.adam_beta2,
        adam_eps=train.adam_eps,
        clip_grad=train.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=use_distributed_optimizer,
    )


class _CPUGradClip:
    """Grad-norm clipping on CPU tensors (Megatron's asserts CUDA), for a MegatronOptimizer subclass."""

    @torch.no_grad()
    def clip_grad_norm(self, clip_grad: float) -> float:
        grads = self.get_main_grads_for_grad_norm()
        local = torch.zeros(1, dtype=torch.float64)
        for grad in grads:
            local += grad.double().pow(2).sum()
        dist.all_reduce(local, group=self.get_grad_stats_parallel_group())
        total_norm = math.sqrt(local.item())
        coeff = clip_grad / (total_norm + 1e-6)
        if coeff < 1.0:
            for param in self.get_parameters():
                if param.grad is not None:
                    param.grad.mul_(coeff)
        return total_norm


class CPUOptimizer(_CPUGradClip, FP32Optimizer):
    """Megatron's FP32Optimizer, clipping on CPU."""


class CPUMixedPrecisionOptimizer(_CPUGradClip, Float16OptimizerWithFloat16Params):
    """Megatron's Float16OptimizerWithFloat16Params for bf16 weights on CPU: its constructor only accepts
    `torch.cuda.*Tensor` parameters, so the three groups it keeps (bf16 weights, their float32 main copies, float32
    weights) are made here by dtype; everything else (grad copies, step, state dicts, checkpoints) is Megatron's."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: OptimizerConfig, init_state_fn):
        MixedPrecisionOptimizer.__init__(self, optimizer, config, None, init_state_fn)  # bf16: no loss scaling
        self.float16_groups, self.fp32_from_float16_groups, self.fp32_from_fp32_groups = [], [], []
        for group in self.optimizer.param_groups:
            low, main, full = [], [], []
            for index, param in enumerate(group["params"]):
                if param.dtype in (torch.bfloat16, torch.float16):
                    main_param = param.detach().clone().float()
                    tensor_parallel.copy_tensor_model_parallel_attributes(main_param, param)
                    if hasattr(param, "shared"):
                        main_param.shared = param.shared
                    group["params"][index] = param.main_param = main_param
                    low.append(param)
                    main.append(main_param)
                elif param.dtype == torch.float32:
                    full.append(param)
                else:
                    raise TypeError(f"optimizer: parameter of dtype {param.dtype}; expected bfloat16, float16 or "
                                    "float32")
            self.float16_groups.append(low)
            self.fp32_from_float16_groups.append(main)
            self.fp32_from_fp32_groups.append(full)
        self.is_stub_optimizer = False


def build_optimizer(model_chunks, train: TrainConfig, runtime: Runtime):
    """Megatron's optimizer on GPU (distributed when the runtime says so), `CPUOptimizer` on CPU."""
    config = _optimizer_config(train, runtime.distributed_optimizer, runtime.bf16)
    if runtime.on_gpu:
        return get_megatron_optimizer(config, model_chunks)
    params = [p for chunk in model_chunks for p in chunk.parameters() if p.requires_grad]
    no_decay = [p for p in params if p.dim() == 1]
    decay = [p for p in params if p.dim() > 1]
    groups = [{"params": decay, "weight_decay": train.weight_decay, "wd_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "wd_mult": 0.0}]  # no decay on norms, biases, tables
    groups = [g for g in groups if g["params"]]
    adamw = torch.optim.AdamW(groups, lr=train.lr, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_eps)
    for group in adamw.param_groups:  # the fields Megatron's param groups carry (scheduler, checkpoint matching)
        group.update(lr_mult=1.0, is_expert_parallel=False,
                     is_decoupled_lr=False, default_config=True, max_lr=train.lr, min_lr=train.min_lr)
    if runtime.bf16:
        return CPUMixedPrecisionOptimizer(adamw, config, init_state_fn=_init_adam_state)
    return CPUOptimizer(adamw, config, init_state_fn=_init_adam_state)


def _init_adam_state(optimizer: torch.optim.Optimizer, config=None) -> None:
    """Create empty Adam moments so a fresh optimizer has the state layout a checkpoint load expects."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if len(optimizer.state[param]) == 0:
                optimizer.state[param]["exp_avg"] = torch.zeros_like(param.data)
                optimizer.state[param]["exp_avg_sq"] = torch.zeros_like(param.data)
                optimizer.state[param]["step"] = torch.zeros((), dtype=torch.float32)


def build_scheduler(optimizer, train: TrainConfig) -> OptimizerParamScheduler:
    decay_steps = train.lr_decay_steps or train.steps
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if train.lr_warmup_steps else train.lr,
        max_lr=train.lr,
        min_lr=train.min_lr,
        lr_warmup_steps=train.lr_warmup_steps,
        lr_decay_steps=max(decay_steps, train.lr_warmup_steps + 1),
        lr_decay_style=train.lr_decay_style,
        start_wd=train.weight_decay,
        end_wd=train.weight_decay,
        wd_incr_steps=max(decay_steps, 1),
        wd_incr_style="constant",
    )


SCHEDULE_FIELDS = {"max_lr": "lr", "min_lr": "min_lr", "lr_warmup_steps": "lr_warmup_steps",
                   "lr_decay_steps": "lr_decay_steps (default: steps)", "lr_decay_style": "lr_decay_style"}


def schedule_changes(scheduler: OptimizerParamScheduler, saved: dict) -> dict[str, tuple]:
    """{field: (checkpoint value, configured value)} where the configured schedule differs from a saved
    `scheduler.state_dict()`. A constant schedule has no decay, so its decay steps and min_lr do not count."""
    constant = saved.get("lr_decay_style") == scheduler.lr_decay_style == "constant"
    fields = [n for n in SCHEDULE_FIELDS if not (constant and n in ("lr_decay_steps", "min_lr"))]
    return {name: (saved[name], getattr(scheduler, name)) for name in fields
            if name in saved and saved[name] != getattr(scheduler, name)}


def prepare_schedule_for_resume(scheduler: OptimizerParamScheduler, saved: dict, train: TrainConfig,
                                step: int) -> str | None:
    """Before loading a checkpoint's scheduler: refuse a changed schedule (Megatron would otherwise keep the
    checkpoint's and print the new one), or with `train.override_lr_schedule` make the load keep the configured
    one. Returns a message saying what was overridden, or None when nothing changed."""
    changes = schedule_changes(scheduler, saved)
    if not changes:
        return None
    listed = ", ".join(f"train.{SCHEDULE_FIELDS[k]}: checkpoint {old}, now {new}" for k, (old, new) in changes.items())
    if not train.override_lr_schedule:
        raise ConfigError(
            f"resuming at step {step} with a different LR schedule ({listed}); set train.override_lr_schedule=true "
            "to continue on the new schedule from that step, or restore the checkpoint's values")
    scheduler.override_opt_param_scheduler = True
    return f"LR schedule overridden at step {step}: {listed}"


def apply_configured_lr_bounds(optimizer, train: TrainConfig) -> None:
    """The param groups' max_lr / min_lr (which the scheduler reads first) as configured: a checkpoint's
    optimizer state brings back the ones it was saved with."""
    for group in optimizer.param_groups:
        group.update(max_lr=train.lr, min_lr=train.min_lr)
