"""Where a training checkpoint save's time goes (issue 35 item 7): `save_checkpoint` of model + optimizer +
scheduler on one CPU rank (gloo), first save and steady saves, against `torch.save` of the same state.

Each case runs alone in a fresh spawned process, as a training run does: "sync" saves (train.async_save false, the
default), or "async" ones, whose helper process is forked at start-up (`start_save_helper`, as `pretrain` does).
The module imports what a training's main module imports, so that a spawned helper costs what it costs there.
Run with PYTHONPATH pointing at an older checkout to measure it (the "async" mode needs this one). Every save is
profiled with cProfile and split into phases by the Megatron / our functions it spends time in:

    helper     the process Megatron's writers report through (`_writer_results_queue`; before: a spawned Manager)
    plan       sharded state dict, validation and global planning (gathers over ranks)
    stage      staging the tensors for the writers (`prepare_write_data`: D2H on GPU, copies of views)
    write      the forked writer processes: fork, write, fsync, join (`write_preloaded_data_multiproc`; async: the
               fork of the background saver and the wait for it, here at once after the save)
    publish    metadata, rank state files, rename and `latest`
    other      the rest (our folder checks and broadcast, Megatron's key translation, the common state)

    PYTHONPATH=. python benchmarks/checkpoint_save.py [--configs tiny big] [--modes sync async]

"tiny" is configs/tiny.yaml (0.3M parameters); "big" the same DiT at hidden 1024, 8 layers (178M parameters,
0.7 GB of fp32 weights; the CPU optimizer saves its moments lazily created, so weights only here). ~3 min in all.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch

# Imported here, not in the child: a spawned helper imports the main module, and a training's main module
# (megatron_moviegen.train) imports all of this.
from megatron_moviegen.checkpoints import distributed as checkpoints
from megatron_moviegen.models.dit_chunks import build_dit_chunks
from megatron_moviegen.parallel.ddp import wrap_ddp
from megatron_moviegen.parallel.initialize import init_model_parallel
from megatron_moviegen.recipes import load_config
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler

CONFIGS = {"tiny": [], "big": ["model.hidden_size=1024", "model.ffn_hidden_size=4096", "model.num_layers=8",
                               "model.num_attention_heads=8"]}
PHASES = {  # phase -> the functions (file suffix, name) whose cumulative time it is
    "helper": [("checkpoints/distributed.py", "_install_writer_results_queue"),
               ("checkpoints/distributed.py", "_writer_results_queue")],
    "plan": [("dist_checkpointing/strategies/state_dict_saver.py", "save_state_dict_async_plan"),  # stage in it
             ("dist_checkpointing/strategies/fully_parallel.py", "apply_saving_parallelization"),
             ("dist_checkpointing/validation.py", "validate_sharding_integrity"),
             ("checkpoints/distributed.py", "_model_sharded_state")],
    "stage": [("dist_checkpointing/strategies/filesystem_async.py", "prepare_write_data")],
    "write": [("dist_checkpointing/strategies/filesystem_async.py", "write_preloaded_data_multiproc"),
              ("dist_checkpointing/strategies/async_utils.py", "schedule_async_call"),  # async: fork of the saver
              ("dist_checkpointing/strategies/async_utils.py", "is_current_async_call_done")],  # and the wait
    "publish": [("dist_checkpointing/strategies/torch.py", "finalize_fn"), ("checkpoints/distributed.py", "_publish"),
                ("checkpoints/distributed.py", "_atomic_torch_save")],
}
STEADY_SAVES = 3


def _phases(profile: cProfile.Profile, total: float) -> dict[str, float]:
    """Seconds per phase of one profiled save; "other" is what is left of `total`."""
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    out = {phase: sum(row[3] for (file, _, name), row in stats.items()
                      if any(file.endswith(suffix) and name == fn for suffix, fn in functions))
           for phase, functions in PHASES.items()}
    out["plan"] -= out["stage"]
    out["other"] = total - sum(out.values())
    return out


def _timed_save(save) -> tuple[float, dict[str, float]]:
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    save()
    profile.disable()
    total = time.perf_counter() - started
    return total, _phases(profile, total)


def _torch_save_s(state, path: Path, fsync: bool) -> float:
    started = time.perf_counter()
    with open(path, "wb") as file:
        torch.save(state, file)
        if fsync:
            file.flush()
            os.fsync(file.fileno())
    return time.perf_counter() - started


def _case(name: str, mode: str, folder: str, queue) -> None:
    """In the child: build the run's model, optimizer and scheduler as pretrain does, save 1 + STEADY_SAVES times."""
    torch.set_num_threads(1)
    if mode == "async":
        checkpoints.start_save_helper()
    cfg = load_config("tiny", CONFIGS[name] + (["train.async_save=true"] if mode == "async" else []))
    runtime = Runtime.for_config(cfg)
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    model = wrap_ddp(chunks, use_distributed_optimizer=runtime.distributed_optimizer, parallel=cfg.parallel)
    optimizer = build_optimizer(model, cfg.train, runtime)
    scheduler = build_scheduler(optimizer, cfg.train)
    root = Path(folder)

    def save(step: int):
        return lambda: (checkpoints.save_checkpoint(root / "run", step, model, optimizer, scheduler, None, cfg),
                        checkpoints.finalize_async_saves())

    first = _timed_save(save(1))
    steady = [_timed_save(save(step)) for step in range(2, 2 + STEADY_SAVES)]
    state = {"model": chunks[0].state_dict(), "optimizer": optimizer.state_dict()}
    plain = [_torch_save_s(state, root / "plain.pt", fsync=False) for _ in range(STEADY_SAVES)]
    synced = [_torch_save_s(state, root / "plain.pt", fsync=True) for _ in range(STEADY_SAVES)]
    step_dir = root / "run" / "iter_0000002"
    queue.put({"params": sum(p.numel() for p in chunks[0].parameters()),
               "checkpoint_mb": sum(f.stat().st_size for f in step_dir.rglob("*") if f.is_file()) / 1e6,
               "torch_save_mb": (root / "plain.pt").stat().st_size / 1e6,
               "first": first, "steady": steady, "torch_save": plain, "torch_save_fsync": synced})


def measure(name: str, mode: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        proc = ctx.Process(target=_case, args=(name, mode, folder, queue))
        proc.start()
        result = queue.get()
        proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=["sync"], choices=["sync", "async"])
    args = parser.parse_args()
    phases = [*PHASES, "other"]
    print("one CPU rank (gloo), 1 torch thread; seconds; steady = median of "
          f"{STEADY_SAVES} saves after the first, its phases from the median save")
    print(f"{'config':>6} {'mode':>6} {'params':>7} {'ckpt MB':>8} | {'first':>6} {'steady':>6} "
          f"{'torch.save':>10} {'+fsync':>6} | " + " ".join(f"{p:>7}" for p in phases) + " | first's phases")
    for name in args.configs:
        for mode in args.modes:
            r = measure(name, mode)
            median = sorted(r["steady"], key=lambda save: save[0])[STEADY_SAVES // 2]
            first_phases = " ".join(f"{p}={r['first'][1][p]:.2f}" for p in phases)
            print(f"{name:>6} {mode:>6} {r['params'] / 1e6:>6.1f}M {r['checkpoint_mb']:>8.1f} | "
                  f"{r['first'][0]:>6.2f} {median[0]:>6.3f} {statistics.median(r['torch_save']):>10.3f} "
                  f"{statistics.median(r['torch_save_fsync']):>6.3f} | "
                  + " ".join(f"{median[1][p]:>7.3f}" for p in phases) + f" | {first_phases}", flush=True)


if __name__ == "__main__":
    main()
