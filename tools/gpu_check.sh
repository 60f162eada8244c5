#!/usr/bin/env bash
# The prepared GPU check: what a person with one H100/H200 for 10 minutes runs as is, from the repository root,
# in the container (or any CUDA machine with this package installed).
#
#   bash tools/gpu_check.sh            # on the GPU; the table lands in outputs/gpu_check/report.md
#   bash tools/gpu_check.sh --cpu      # the same steps at toy sizes on CPU (CI runs this)
#
# 1. versions and the GPU's name
# 2. latent shards of the bundled real clips (toy TAE and text encoders, the quickstart's 64 px buckets)
# 3. the real training build path on one GPU: Megatron DDP, the distributed optimizer, bf16, 6 steps, loss finite
# 4. train + save at step 3 + resume to step 6 in a new launch: the resumed losses repeat the uninterrupted run's
# 5. benchmarks/dit_throughput.py at the 30B width: 8,192 and 73,728 tokens with flash and cuDNN attention (local
#    spec); with TransformerEngine installed also its spec and FP8, asserting FP8 was really on
# 6. one training step of the 30B width with 2 blocks at 73,728 tokens: peak memory against plan_layout's estimate
# Each step prints what it measured; any failure stops the check with the step's error.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; shift; fi
OUT=${OUT:-outputs/gpu_check}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=ignore
rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
step() { echo "== $* ($(( $(date +%s) - start )) s)"; }

step "1/6 versions"
python tools/gpu_check.py env --out "$OUT/env.json"

step "2/6 latent shards of the bundled clips"
python -m megatron_moviegen.data.bundled "$OUT/manifest.jsonl"
python tools/preencode_latents.py --config quickstart --manifest "$OUT/manifest.jsonl" --out "$OUT/shards" \
    --tae toy-tae --text-encoders toy

# One process: TP=1 (the quickstart recipe's tiny model), bf16, the distributed optimizer on GPU.
TRAIN=(-m megatron_moviegen.train --config quickstart "data.shards=$OUT/shards" train.precision=bf16
       parallel.tensor_model_parallel_size=1 parallel.sequence_parallel=false parallel.use_distributed_optimizer=true
       parallel.overlap_grad_reduce=true train.lr_warmup_steps=2 train.lr_decay_steps=6 train.log_every=1
       train.save_every=3 train.progress_bar=false)
step "3/6 train 6 bf16 steps (Megatron DDP, distributed optimizer on GPU)"
torchrun --standalone --nproc-per-node 1 "${TRAIN[@]}" train.steps=6 "train.checkpoint_dir=$OUT/whole"

step "4/6 train 3 steps and save, then resume to step 6 in a new launch"
torchrun --standalone --nproc-per-node 1 "${TRAIN[@]}" train.steps=3 "train.checkpoint_dir=$OUT/resumed"
torchrun --standalone --nproc-per-node 1 "${TRAIN[@]}" train.steps=6 "train.checkpoint_dir=$OUT/resumed"
python tools/gpu_check.py runs --whole "$OUT/whole" --resumed "$OUT/resumed" --resumed-at 3 \
    --out "$OUT/runs.json" $([[ $MODE == cpu ]] && echo --exact)

step "5/6 DiT block throughput"
if [[ $MODE == cpu ]]; then
    python benchmarks/dit_throughput.py --smoke --dtype bf16 --recompute full --json "$OUT/bench_local-sdpa.json"
else
    BENCH=(--recipe t2v_30b --layers 2 --tokens 8192,73728 --recompute full --spec-peak-tflops 989.4)
    python benchmarks/dit_throughput.py "${BENCH[@]}" --self-attn-backend flash --json "$OUT/bench_local-flash.json"
    python benchmarks/dit_throughput.py "${BENCH[@]}" --self-attn-backend cudnn --json "$OUT/bench_local-cudnn.json"
    if python -c "import transformer_engine" 2>/dev/null; then
        python benchmarks/dit_throughput.py "${BENCH[@]}" --impl transformer_engine --json "$OUT/bench_te-bf16.json"
        python benchmarks/dit_throughput.py "${BENCH[@]}" --impl transformer_engine --fp8 hybrid \
            --json "$OUT/bench_te-fp8.json"
    else
        echo "TransformerEngine is not installed: no TE or FP8 rows"
    fi
fi

step "6/6 training-step peak memory against the planner"
python tools/gpu_check.py memory --out "$OUT/memory.json" $([[ $MODE == cpu ]] && echo --cpu)

python tools/gpu_check.py report --dir "$OUT" | tee "$OUT/report.md.tmp"
mv "$OUT/report.md.tmp" "$OUT/report.md"
echo "gpu check ($MODE) passed in $(( $(date +%s) - start )) s: $OUT/report.md"
