"""The Python steps of tools/gpu_check.sh: versions, the training runs' checks, the 30B-width memory step and the
report. Each subcommand writes one JSON file into the check's folder; `report` turns them into the table that goes
into docs/performance.md.

    python tools/gpu_check.py env --out outputs/gpu_check/env.json
    python tools/gpu_check.py runs --whole outputs/gpu_check/whole --resumed outputs/gpu_check/resumed --out ...
    python tools/gpu_check.py memory --out outputs/gpu_check/memory.json [--cpu]
    python tools/gpu_check.py report --dir outputs/gpu_check
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_moviegen.utils.io import atomic_write_text  # noqa: E402

GIB = 2**30
# The memory step: the 30B's width (d 6144, SwiGLU 16384, 48 heads, 656 text tokens) with 2 blocks on one GPU at
# a 768 px, 16 s sample's 73,728 tokens with full recompute, as the t2iv_768 stage trains; toy sizes with --cpu.
MEMORY = {"gpu": dict(recipe="t2v_30b", layers=2, grid=(32, 48, 48)),
          "cpu": dict(recipe="tiny", layers=2, grid=(4, 8, 8))}
# A step resumed from a checkpoint must repeat the uninterrupted run: exactly on CPU; on GPU the first resumed step
# exactly (same weights and inputs, deterministic forward) and later ones within the spread of atomics-based
# backward kernels.
GPU_RESUME_RTOL = 1e-2


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / GIB if cuda else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "megatron_core": _version("megatron-core"), "transformer_engine": _version("transformer_engine")
        or _version("transformer-engine"), "apex": importlib.util.find_spec("apex") is not None,
        "flash_attn": _version("flash-attn") or _version("flash_attn"), "nvidia_dali": _version("nvidia-dali-cuda120"),
    }


def read_metrics(folder: Path) -> dict[int, dict]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training metrics (did the training run start?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["step"]: row for row in rows if "loss" in row}


def check_runs(whole: Path, resumed: Path, resumed_at: int, exact: bool) -> dict:
    """The uninterrupted run's losses are finite, and the run resumed from its step-`resumed_at` checkpoint repeats
    it: every step exactly with `exact` (CPU); else the first resumed step exactly (the same weights and inputs,
    a deterministic forward) and later ones within GPU_RESUME_RTOL (atomics-based backward kernels)."""
    a, b = read_metrics(whole), read_metrics(resumed)
    losses = {step: row["loss"] for step, row in sorted(a.items())}
    if not losses or not all(math.isfinite(v) for v in losses.values()):
        raise AssertionError(f"{whole}: training losses not all finite: {losses}")
    after = sorted(s for s in b if s > resumed_at)
    if not after or any(s not in a for s in after):
        raise AssertionError(f"{resumed}: no steps after {resumed_at} to compare with {whole} (got {sorted(b)})")
    differences = {s: abs(a[s]["loss"] - b[s]["loss"]) / max(abs(a[s]["loss"]), 1e-12) for s in after}
    for step in after:
        if (exact or step == after[0]) and a[step]["loss"] != b[step]["loss"]:
            raise AssertionError(f"step {step}: resumed loss {b[step]['loss']!r} != uninterrupted {a[step]['loss']!r}")
        if differences[step] > GPU_RESUME_RTOL:
            raise AssertionError(f"step {step}: resumed loss differs by {differences[step]:.2e} (relative)")
    return {"losses": losses, "resumed_steps": after, "max_relative_difference": max(differences.values()),
            "tokens_per_s": [row.get("tokens_per_s") for row in a.values()],
            "memory": {k: v for k, v in a[max(a)].items() if k.startswith("mem_")}}


def memory_step(cpu: bool) -> dict:
    """One training step (Megatron DDP, the GPU's distributed optimizer, AdamW) of the 2-block model at the full
    sample's tokens; its peak memory against planning.memory's estimate for the same layout."""
    from benchmarks.dit_throughput import MemoryMeter  # CUDA's peak, or the process RSS sampled every 1 ms
    from megatron_moviegen.conditioning import Conditioning, Tokens
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.ddp import connect_ddp_to_schedules, wrap_ddp
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed
    from megatron_moviegen.parallel.layout import SequenceLayout
    from megatron_moviegen.planning.memory import estimate_memory
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.training.microbatch import flow_matching_microbatch, run_microbatches
    from megatron_moviegen.training.optimizer import build_optimizer

    setting = MEMORY["cpu" if cpu else "gpu"]
    overrides = ["parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false",
                 "parallel.context_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
                 f"model.num_layers={setting['layers']}", "model.recompute_granularity=full", "train.precision=bf16"]
    cfg = load_config(setting["recipe"], overrides)
    runtime = Runtime.for_config(cfg)
    init_model_parallel(cfg.parallel, runtime)
    with MemoryMeter() as meter:  # from before the model is built: weights, grads and optimizer count too
        set_seed(0, runtime)
        chunks = build_dit_chunks(cfg, runtime)
        model = wrap_ddp(chunks, runtime.distributed_optimizer, parallel=cfg.parallel)
        connect_ddp_to_schedules(model)
        optimizer = build_optimizer(model, cfg.train, runtime)
        chunks[0].config.grad_scale_func = optimizer.scale_loss
        latents = torch.randn(1, cfg.model.latent_channels, *(g * p for g, p in zip(setting["grid"],
                                                                                      cfg.model.patch_size)))
        tokens = {n: Tokens(torch.randn(1, s.max_length, s.width), torch.ones(1, s.max_length, dtype=torch.bool))
                  for n, s in cfg.model.context_sources().items()}
        microbatch = flow_matching_microbatch(latents, Conditioning(tokens), torch.Generator().manual_seed(0), cfg,
                                              runtime.device, 0.0)
        seq = chunks[0].tokens_per_sample(latents.shape)
        started = time.perf_counter()
        losses = run_microbatches(model, SequenceLayout(), [microbatch], seq, 1)
        optimizer.step()
    seconds = time.perf_counter() - started
    peak = (meter.peak if runtime.on_gpu else meter.transient) / GIB
    estimate = estimate_memory(cfg.model, cfg.parallel, 1, seq, 1)
    destroy()
    loss = float(losses[0]["loss"])
    if not math.isfinite(loss):
        raise AssertionError(f"memory step: loss {loss}")
    return {"recipe": setting["recipe"], "layers": setting["layers"], "tokens": seq, "loss": loss,
            "step_s": seconds, "measured_peak_gib": peak,
            "measured": "cuda max_memory_allocated" if runtime.on_gpu else "process RSS growth",
            "estimated_gib": estimate.total_gib,
            "estimate": {k: getattr(estimate, k) for k in ("weights_gib", "grads_gib", "optimizer_gib",
                                                           "activations_gib", "workspace_gib")}}


def report(folder: Path) -> str:
    env = json.loads((folder / "env.json").read_text())
    runs = json.loads((folder / "runs.json").read_text())
    memory = json.loads((folder / "memory.json").read_text())
    lines = [f"GPU check on {env['device']} (compute capability {env['compute_capability']}): torch {env['torch']}, "
             f"CUDA {env['cuda']}, megatron-core {env['megatron_core']}, TransformerEngine "
             f"{env['transformer_engine'] or 'not installed'}, apex {'yes' if env['apex'] else 'no'}", "",
             "| check | result |", "|---|---|"]
    losses = runs["losses"]
    lines.append(f"| bf16 training, {len(losses)} steps (DDP, distributed optimizer on GPU) | loss "
                 f"{losses[min(losses, key=int)]:.4f} -> {losses[max(losses, key=int)]:.4f}, all finite |")
    lines.append(f"| save + resume | steps {runs['resumed_steps']} repeated, first one exactly, max relative "
                 f"loss difference {runs['max_relative_difference']:.2e} |")
    lines.append(f"| training-step peak memory, {memory['recipe']} width x {memory['layers']} blocks, "
                 f"{memory['tokens']:,} tokens, full recompute | measured {memory['measured_peak_gib']:.2f} GiB "
                 f"({memory['measured']}), planned {memory['estimated_gib']:.2f} GiB |")
    for bench in sorted(folder.glob("bench_*.json")):
        result = json.loads(bench.read_text())
        for row in result["rows"]:
            label = f"{bench.stem[6:]} {row['tokens']:,} tokens, recompute {row['recompute']}"
            if row["status"] != "ok":
                lines.append(f"| throughput {label} | {row['status']} |")
                continue
            lines.append(f"| throughput {label} | {row['ms_per_block']:.2f} ms/block, {row['tflops']:.4g} TFLOP/s, "
                         f"MFU {100 * row['mfu']:.1f}% of the measured matmul peak, self-attention "
                         f"{row['self_attention_kernel']}, FP8 {result['environment'].get('fp8', 'off')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env").add_argument("--out", required=True)
    runs = sub.add_parser("runs")
    runs.add_argument("--whole", required=True)
    runs.add_argument("--resumed", required=True)
    runs.add_argument("--resumed-at", type=int, required=True, help="the step the resumed run was restarted from")
    runs.add_argument("--out", required=True)
    runs.add_argument("--exact", action="store_true", help="every resumed loss bit for bit (CPU)")
    memory = sub.add_parser("memory")
    memory.add_argument("--out", required=True)
    memory.add_argument("--cpu", action="store_true", help="toy sizes on CPU")
    sub.add_parser("report").add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    if args.command == "report":
        print(report(Path(args.dir)))
        return 0
    if args.command == "env":
        result = environment()
    elif args.command == "runs":
        result = check_runs(Path(args.whole), Path(args.resumed), args.resumed_at, args.exact)
    else:
        result = memory_step(args.cpu)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
