"""Print the resolved parallel layout of a recipe on N GPUs and its per-GPU memory estimate. Launches nothing. An
audio recipe (data.audio) is planned for its longest window; --frames/--height/--width size a video sample.

    python tools/plan_layout.py --config t2iv_768 --gpus 6144
    python tools/plan_layout.py --config audio_13b --gpus 512
    python tools/plan_layout.py --config t2iv_768 --gpus 512 model.recompute_granularity=null
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--gpus", type=int, required=True, help="world size (nodes x GPUs per node)")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="per-GPU memory (H100: 80, H200: 141)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.planning.flops import dit_training_flops
    from megatron_moviegen.planning.memory import estimate_memory, format_estimate
    from megatron_moviegen.planning.summary import sample_tokens

    cfg = load_config(args.config, args.overrides)
    p = cfg.parallel
    dp = p.check_world_size(args.gpus)
    micro = cfg.train.num_microbatches(dp)
    tokens, sample = sample_tokens(cfg, args.frames, args.height, args.width)
    est = estimate_memory(cfg.model, p, dp, tokens, cfg.train.micro_batch_size)
    flops = dit_training_flops(cfg.model, tokens)
    print(f"recipe {cfg.name} on {args.gpus} GPUs")
    print(f"  TP {p.tensor_model_parallel_size} (SP {'on' if p.sequence_parallel else 'off'}) x CP "
          f"{p.context_parallel_size} x PP {p.pipeline_model_parallel_size} x DP {dp}; distributed optimizer "
          f"{'on' if p.use_distributed_optimizer else 'off'}; recompute {cfg.model.recompute_granularity}")
    print(f"  global batch {cfg.train.global_batch_size} = micro {cfg.train.micro_batch_size} x {micro} microbatches "
          f"x DP {dp}")
    print(f"  sample {sample} -> {tokens:,} tokens, {flops.total:.3e} FLOPs fwd+bwd "
          f"({flops.attention_fraction:.0%} attention)")
    print("per-GPU memory estimate (megatron_moviegen/planning/memory.py):")
    print(format_estimate(est, args.gpu_memory_gb * 1e9 / 2**30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
