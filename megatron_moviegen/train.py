"""Pretrain the Movie Gen DiT with flow matching on pre-encoded latent shards.

    torchrun --nproc-per-node 8 -m megatron_moviegen.train --config t2iv_768 train.checkpoint_dir=/ckpt
    python -m megatron_moviegen.train --config tiny --print-config

Resumes from `train.checkpoint_dir/latest` when it exists (`train.resume=false train.overwrite=true` to start
over in it). SIGTERM/SIGUSR1 save a checkpoint and exit 0 at the end of the current step, so SLURM requeues lose
no work. A refused start (the folder is another run's, or holds checkpoints a fresh run would overwrite) exits 2
and a non-finite loss exits 1, each with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe name (tiny, t2v_30b, t2i_256, ...) or YAML path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=10 parallel.tensor_model_parallel_size=2")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from megatron_moviegen.runtime import rank_and_world_from_env
    from megatron_moviegen.utils.logs import configure_logging

    env_rank, env_world = rank_and_world_from_env()
    speaks = configure_logging(env_rank, logging_rank=env_world - 1)  # the last rank: it holds the loss
    from megatron_moviegen.config import ConfigError, to_yaml
    from megatron_moviegen.recipes import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        cfg.parallel.check_world_size(env_world)  # before any process group: one line, not a traceback per rank
    except ConfigError as exc:
        if speaks:
            print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    import torch.distributed as dist

    from megatron_moviegen.checkpoints.distributed import CheckpointError, finalize_async_saves
    from megatron_moviegen.parallel.initialize import init_distributed
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.data.loader import DamagedShardError
    from megatron_moviegen.training.nonfinite import NonFiniteLossError
    from megatron_moviegen.training.pretrain import pretrain

    runtime = Runtime.for_config(cfg)
    _, world = init_distributed(runtime)
    if speaks:
        print(f"# resolved config ({world} ranks)\n{to_yaml(cfg)}", flush=True)
    try:
        try:
            result = pretrain(cfg, runtime)
        except (CheckpointError, ConfigError, DamagedShardError, FileNotFoundError, NonFiniteLossError) as exc:
            # every rank raises it (FileNotFoundError: data.shards not pre-encoded, a missing train.load_from): once
            if speaks:
                print(f"train: error: {exc}", file=sys.stderr, flush=True)
            return 1 if isinstance(exc, NonFiniteLossError) else 2
        finalize_async_saves()  # an asynchronous save is published (`latest`) before the process exits
        if speaks:
            if result.checkpoint is None and result.step >= cfg.train.steps:
                print(f"nothing to train: the checkpoint already reached train.steps={cfg.train.steps} "
                      "(raise train.steps to continue, or set train.checkpoint_dir elsewhere, or "
                      "train.resume=false train.overwrite=true, to start over)", flush=True)
            else:
                print(f"finished at step {result.step}: loss {result.last_loss:.5f}, checkpoint {result.checkpoint}"
                      + (" (preempted)" if result.preempted else ""), flush=True)
    finally:
        from megatron_moviegen.parallel.initialize import destroy

        destroy()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
