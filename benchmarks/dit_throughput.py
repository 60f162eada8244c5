"""DiT block throughput: forward+backward time, TFLOP/s and MFU of N Movie Gen blocks at video token counts.

    python benchmarks/dit_throughput.py                                  # t2v_30b width, 2 blocks, 73,728 tokens
    python benchmarks/dit_throughput.py --tokens 8192,32768,73728 --json dit.json
    python benchmarks/dit_throughput.py --smoke                          # CPU-sized: tiny recipe, float32, seconds

The blocks are built by the project's own code (`build_dit_chunks`, the local or TransformerEngine layer
spec) on one device with TP = CP = PP = 1, in the dtype training uses (the model holds bf16 weights itself and
returns float32, as in training). `--fp8 hybrid` (TE spec) runs the blocks' linears in FP8 and checks that FP8
was really active in every block's forward.
One step = MovieGenDiT forward + backward from a random output gradient. The stem (patchify, time and
text embeddings, unpatchify) is timed on its own with the blocks removed and subtracted, so every
per-block figure is (whole model - stem) / N. Method and formulas: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from megatron_moviegen.recipes import load_config  # noqa: E402
from megatron_moviegen.models.local_layers import SDPACoreAttention  # noqa: E402
from megatron_moviegen.models.dit_chunks import build_dit_chunks  # noqa: E402
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed  # noqa: E402
from megatron_moviegen.runtime import Runtime  # noqa: E402
from megatron_moviegen.utils.io import atomic_write_text  # noqa: E402
from megatron_moviegen.conditioning import Conditioning, Tokens  # noqa: E402
from megatron_moviegen.planning.flops import dit_training_flops  # noqa: E402

GIB = 2**30
SINGLE_DEVICE = [
    "parallel.tensor_model_parallel_size=1",
    "parallel.sequence_parallel=false",
    "parallel.context_parallel_size=1",
    "parallel.pipeline_model_parallel_size=1",
    "parallel.virtual_pipeline_model_parallel_size=null",
]
SMOKE = dict(recipe="tiny", tokens="128,512", layers=2, dtype="float32", warmup=1, iters=3, peak_size=256, threads=1)
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
SDPA_OPS = {  # aten op -> backend label
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
}
FORCEABLE = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}
ATTENTION_KERNEL_MARKS = ("flash", "fmha", "attention", "sdpa", "attn")
GEMM_KERNEL_MARKS = ("gemm", "nvjet", "xmma", "cutlass", "cublas", "matmul")
CPU_GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
                "aten::convolution_backward", "aten::_convolution"}
COLUMNS = ["tokens", "grid t x h x w", "recompute", "ms/block", "TFLOP/s", "MFU %", "gemm TFLOP/s",
           "attn TFLOP/s", "other ms/block", "peak GiB", "act GiB/block", "self-attn"]


# ---- what to run ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="t2v_30b", help="model width and text encoders come from this recipe")
    p.add_argument("--layers", type=int, default=2, help="blocks to build (model.num_layers)")
    p.add_argument("--tokens", default="73728", help="comma-separated video token counts")
    p.add_argument("--impl", default="local", choices=["local", "transformer_engine", "auto"])
    p.add_argument("--dtype", default=None, help="bfloat16 (default on GPU) or float32 (default on CPU)")
    p.add_argument("--recompute", default="none,full", help="comma-separated: none, full")
    p.add_argument("--fp8", default=None, choices=["hybrid", "e4m3"], help="model.fp8 (needs --impl transformer_engine)")
    p.add_argument("--fp8-recipe", default="tensorwise", choices=["tensorwise", "delayed", "blockwise", "mxfp8"])
    p.add_argument("--self-attn-backend", default="flash", choices=[*FORCEABLE, "auto"],
                   help="local spec: force this torch SDPA kernel for self-attention, or let torch choose")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--peak-size", type=int, default=None, help="n of the n^3 matmul peak (8192 GPU, 1024 CPU)")
    p.add_argument("--peak-repeats", type=int, default=5)
    p.add_argument("--spec-peak-tflops", type=float, default=None,
                   help="also report MFU against this datasheet peak (989.4 for H100/H200 SXM dense bf16)")
    p.add_argument("--override", action="append", default=[], help="extra config override a.b=value")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write header and rows to this file")
    p.add_argument("--smoke", action="store_true", help="tiny recipe, float32, a few seconds (CI)")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            if p.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    return args


def token_grid(tokens: int, max_grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """Token count -> (t, h, w) token grid within the position tables: the largest square h = w that fits,
    else the widest h x w; t = tokens / (h * w)."""
    max_t, max_h, max_w = max_grid
    candidates = []
    for h in range(1, max_h + 1):
        for w in range(1, max_w + 1):
            if tokens % (h * w) == 0 and tokens // (h * w) <= max_t:
                candidates.append((h == w, h * w, h, w))
    if not candidates:
        raise ValueError(f"{tokens} tokens do not fit a t x h x w grid within the position tables "
                         f"(t <= {max_t}, h <= {max_h}, w <= {max_w}); pick a count that does, "
                         f"e.g. {max_t * max_h * max_w}")
    _, _, h, w = max(candidates)
    return tokens // (h * w), h, w


# ---- device plumbing ------------------------------------------------------------------------------------
def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_ms(fn, iters: int) -> list[float]:
    """Milliseconds of each of `iters` calls: CUDA events on GPU, perf_counter on CPU."""
    out = []
    for _ in range(iters):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
    return out


def matmul_peak_tflops(size: int, dtype: torch.dtype, repeats: int) -> float:
    """Best of `repeats` timings of 5 back-to-back (size x size) @ (size x size) products, random operands."""
    a, b = (torch.randn(size, size, device=device(), dtype=dtype) for _ in range(2))
    out = torch.empty(size, size, device=device(), dtype=dtype)

    def five():
        for _ in range(5):
            torch.matmul(a, b, out=out)

    time_ms(five, 2)
    best = min(time_ms(five, repeats))
    return 5 * 2 * size**3 / (best * 1e-3) / 1e12


class MemoryMeter:
    """Peak and transient bytes of a region: CUDA max_memory_allocated, or on CPU the process RSS sampled
    every millisecond by a thread."""

    kind = "cuda max_memory_allocated" if torch.cuda.is_available() else "cpu RSS sampled every 1 ms"

    def __enter__(self):
        synchronize()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            import psutil

            self._process = psutil.Process()
            self.base = self._process.memory_info().rss
            self._max, self._stop = self.base, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._max = max(self._max, self._process.memory_info().rss)
            time.sleep(1e-3)

    def __exit__(self, *exc):
        synchronize()
        if torch.cuda.is_available():
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._process.memory_info().rss)
        self.transient = self.peak - self.base


# ---- where the time goes --------------------------------------------------------------------------------
def classify_kernel(name: str) -> str:
    lower = name.lower()
    if any(mark in lower for mark in ATTENTION_KERNEL_MARKS):
        return "attention"
    if any(mark in lower for mark in GEMM_KERNEL_MARKS):
        return "gemm"
    return "other"


def classify_cpu_op(name: str) -> str:
    if "scaled_dot_product" in name:
        return "attention"
    return "gemm" if name in CPU_GEMM_OPS else "other"


def busy_ms(events) -> dict[str, float]:
    """Busy milliseconds per bucket (gemm, attention, other): GPU kernel durations, or CPU ops' self time."""
    buckets = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in events:
        if torch.cuda.is_available():
            if event.device_type == DeviceType.CUDA:
                buckets[classify_kernel(event.name)] += event.time_range.elapsed_us() / 1e3
        elif event.device_type == DeviceType.CPU and event.name.startswith("aten::"):
            buckets[classify_cpu_op(event.name)] += event.self_cpu_time_total / 1e3
    return buckets


def sdpa_backends(events, scope: str) -> str:
    """The torch SDPA kernels run inside record_function(scope) scopes ("-" when none, e.g. TE attention)."""
    found = set()
    stack = [e for e in events if e.name == scope]
    while stack:
        event = stack.pop()
        if event.name in SDPA_OPS:
            found.add(SDPA_OPS[event.name])
        stack.extend(event.cpu_children)
    return "+".join(sorted(found)) or "-"


class AttentionScopes:
    """Wraps each block's core attention in a profiler scope; with `forced` (a torch SDPA backend), self-attention
    runs under sdpa_kernel(forced), so a shape or dtype that kernel cannot take raises instead of falling back."""

    def __init__(self, blocks, forced: SDPBackend | None):
        self.forced = forced
        self.fallback: str | None = None
        for block in blocks:
            self._wrap(block.self_attention.core_attention, "bench::self_attention", force=True)
            self._wrap(block.cross_attention.core_attention, "bench::cross_attention", force=False)

    def _wrap(self, module, scope: str, force: bool) -> None:
        inner = module.forward

        def forward(*args, **kwargs):
            kernel = sdpa_kernel([self.forced]) if force and self.forced is not None else contextlib.nullcontext()
            with record_function(scope), kernel:
                return inner(*args, **kwargs)

        module.forward = forward

    def first_call(self, step) -> None:
        """Run `step`; if the forced kernel is refused, note why and let torch choose from then on."""
        if self.forced is None:
            return step()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return step()
            except RuntimeError as err:
                refused = any(word in str(err).lower() for word in ("kernel", "backend"))
                if isinstance(err, torch.OutOfMemoryError) or not refused:
                    raise
                reasons = [str(w.message) for w in caught if "not used because" in str(w.message)]
                self.fallback = " | ".join(reasons + [str(err).splitlines()[0]])
                self.forced = None
        return step()


# ---- the model ------------------------------------------------------------------------------------------
def build_model(args, recompute: str, dtype: torch.dtype):
    """The DiT with `args.layers` blocks on this device; returns (callable model, MovieGenDiT, cfg)."""
    overrides = SINGLE_DEVICE + [
        f"model.num_layers={args.layers}",
        f"model.transformer_impl={args.impl}",
        f"model.recompute_granularity={'full' if recompute == 'full' else 'null'}",
    ] + ([f"model.fp8={args.fp8}", f"model.fp8_recipe={args.fp8_recipe}"] if args.fp8 else []) + args.override
    cfg = load_config(args.recipe, overrides)
    runtime = Runtime.resolve("bf16" if dtype == torch.bfloat16 else "fp32", cfg.model.transformer_impl,
                              distributed_optimizer=False)
    init_model_parallel(cfg.parallel, runtime)
    set_seed(1234, runtime)
    dit = build_dit_chunks(cfg, runtime)[0]
    return dit, dit, cfg


class FP8Probe:
    """Records, for every block's forward, whether TransformerEngine's FP8 autocast was active at its first linear
    (an FP8 run that silently ran in bf16 fails `check`)."""

    def __init__(self, blocks, expected: bool):
        self.expected, self.seen = expected, []
        if not expected:
            return
        from transformer_engine.pytorch.fp8 import FP8GlobalStateManager

        for block in blocks:
            block.self_attention.linear_qkv.register_forward_pre_hook(
                lambda *_: self.seen.append(FP8GlobalStateManager.is_fp8_enabled()))

    def check(self) -> str:
        if not self.expected:
            return "off"
        if not self.seen or not all(self.seen):
            raise AssertionError(f"--fp8: FP8 was not active in every block's forward ({self.seen.count(True)} of "
                                 f"{len(self.seen)} block forwards in FP8)")
        return f"on ({len(self.seen)} block forwards)"


def latent_shape(cfg, grid: tuple[int, int, int]) -> list[int]:
    """Token grid -> the (b, c, t, h, w) latent that patchifies to it."""
    return [1, cfg.model.latent_channels] + [g * p for g, p in zip(grid, cfg.model.patch_size)]


def make_inputs(cfg, grid: tuple[int, int, int]) -> dict:
    """Random latents of the given token grid, flow times and text embeddings with every token real."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(*latent_shape(cfg, grid), generator=gen)  # (b, c, t, h, w)
    tokens = {name: Tokens(torch.randn(1, source.max_length, source.width, generator=gen),
                           torch.ones(1, source.max_length, dtype=torch.bool))
              for name, source in cfg.model.context_sources().items()}
    to = lambda x: x.to(device())  # noqa: E731
    return dict(latents=to(latents), timesteps=to(torch.rand(1, generator=gen)),
                conditioning=Conditioning(tokens).to(device()))


@contextlib.contextmanager
def stem_only(dit):
    """The model without its blocks: what the per-block figures subtract."""
    blocks = dit.layers
    dit.layers = torch.nn.ModuleList()
    try:
        yield
    finally:
        dit.layers = blocks


@dataclass
class StepMeasurement:
    ms: float  # median
    ms_spread: tuple[float, float]  # min, max
    peak_bytes: int
    transient_bytes: int
    busy: dict[str, float]
    backends: dict[str, str] = field(default_factory=dict)


def measure_step(model, inputs: dict, scopes: AttentionScopes, args) -> StepMeasurement:
    """Forward + backward of `model` on `inputs`: warmup, timed iterations, memory, one profiled step."""
    params = [p for p in model.parameters() if p.requires_grad]
    grad_out = None

    def step():
        nonlocal grad_out
        out = model(inputs["latents"], inputs["timesteps"], inputs["conditioning"])
        if grad_out is None:
            grad_out = torch.randn_like(out)
        out.backward(grad_out)

    def zero_grads():  # grads stay allocated: the step's transient memory is activations and workspace
        for p in params:
            if p.grad is not None:
                p.grad.zero_()

    scopes.first_call(step)
    for _ in range(args.warmup):
        zero_grads()
        step()
    times = []
    with MemoryMeter() as memory:
        for _ in range(args.iters):
            zero_grads()
            times += time_ms(step, 1)
    zero_grads()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
        synchronize()
    events = prof.events()
    return StepMeasurement(
        ms=statistics.median(times), ms_spread=(min(times), max(times)),
        peak_bytes=memory.peak, transient_bytes=memory.transient, busy=busy_ms(events),
        backends={"self": sdpa_backends(events, "bench::self_attention"),
                  "cross": sdpa_backends(events, "bench::cross_attention")},
    )


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- one row --------------------------------------------------------------------------------------------
def block_row(cfg, layers: int, tokens: int, grid, recompute: str, full: StepMeasurement, stem: StepMeasurement,
              peak_tflops: float, spec_peak_tflops: float | None) -> dict:
    """Per-block figures: (whole model - stem) / layers; FLOPs from planning/flops.py for one block."""
    flops = dit_training_flops(cfg.model, tokens, num_layers=1)
    per_block = lambda a, b: (a - b) / layers  # noqa: E731
    ms = per_block(full.ms, stem.ms)
    busy = {k: per_block(full.busy[k], stem.busy[k]) for k in full.busy}
    tflops = flops.total / (ms * 1e-3) / 1e12
    row = {
        "tokens": tokens, "grid": list(grid), "latent_shape": latent_shape(cfg, grid), "recompute": recompute,
        "status": "ok",
        "ms_per_block": ms, "model_ms": full.ms, "model_ms_min_max": list(full.ms_spread), "stem_ms": stem.ms,
        "flops_per_block": {"matmul": flops.matmul, "attention": flops.attention, "total": flops.total},
        "attention_fraction": flops.attention_fraction,
        "tflops": tflops, "mfu": tflops / peak_tflops,
        "busy_ms_per_block": busy,
        "gemm_tflops": flops.matmul / (busy["gemm"] * 1e-3) / 1e12 if busy["gemm"] > 0 else None,
        "attention_tflops": flops.attention / (busy["attention"] * 1e-3) / 1e12 if busy["attention"] > 0 else None,
        "peak_gib": full.peak_bytes / GIB,
        "act_gib_per_block": per_block(full.transient_bytes, stem.transient_bytes) / GIB,
        "self_attention_kernel": full.backends["self"], "cross_attention_kernel": full.backends["cross"],
    }
    if spec_peak_tflops:
        row["mfu_spec"] = tflops / spec_peak_tflops
    return row


def failed_row(cfg, tokens: int, grid, recompute: str, reason: str) -> dict:
    return {"tokens": tokens, "grid": list(grid), "latent_shape": latent_shape(cfg, grid), "recompute": recompute,
            "status": reason}


def format_table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = []
    for row in rows:  # TFLOP/s with 4 significant digits: the CPU smoke run is at 1e-3 of a GPU's rate
        grid = "x".join(map(str, row["grid"]))
        if row["status"] != "ok":
            lines.append([f"{row['tokens']}", grid, row["recompute"], row["status"]] + [""] * (len(COLUMNS) - 4))
            continue
        lines.append([
            f"{row['tokens']}", grid, row["recompute"], fmt(row["ms_per_block"], ".2f"), fmt(row["tflops"], ".4g"),
            fmt(100 * row["mfu"], ".1f"), fmt(row["gemm_tflops"], ".4g"), fmt(row["attention_tflops"], ".4g"),
            fmt(row["busy_ms_per_block"]["other"], ".2f"), fmt(row["peak_gib"], ".2f"),
            fmt(row["act_gib_per_block"], ".2f"), row["self_attention_kernel"],
        ])
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(COLUMNS)]
    render = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(COLUMNS), render(["-" * w for w in widths])] + [render(line) for line in lines])


def recompute_summary(rows: list[dict]) -> list[str]:
    out = []
    ok = {(r["tokens"], r["recompute"]): r for r in rows if r["status"] == "ok"}
    for tokens in sorted({r["tokens"] for r in rows}):
        none, full = ok.get((tokens, "none")), ok.get((tokens, "full"))
        if none and full:
            ratio = full["ms_per_block"] / none["ms_per_block"]
            out.append(f"recompute full vs none at {tokens} tokens: time x{ratio:.2f}, "
                       f"transient memory {full['act_gib_per_block']:.2f} vs {none['act_gib_per_block']:.2f} GiB/block")
    return out


# ---- main -----------------------------------------------------------------------------------------------
def environment(args, dtype, peak_tflops: float, cfg) -> dict:
    from megatron.core import package_info

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "megatron_core": package_info.__version__, "recipe": args.recipe,
        "impl": Runtime.resolve(transformer_impl=cfg.model.transformer_impl).transformer_impl,
        "layers": args.layers, "dtype": str(dtype),
        "hidden": cfg.model.hidden_size, "heads": cfg.model.num_attention_heads, "head_dim": cfg.model.head_dim,
        "ffn": cfg.model.ffn_hidden_size, "text_tokens": cfg.model.context_length,
        "peak_matmul_tflops": peak_tflops, "peak_matmul_size": args.peak_size,
        "spec_peak_tflops": args.spec_peak_tflops,
        "memory": MemoryMeter.kind, "timer": "cuda events" if torch.cuda.is_available() else "time.perf_counter",
        "warmup": args.warmup, "iters": args.iters,
    }


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")]
    args.peak_size = args.peak_size or (8192 if torch.cuda.is_available() else 1024)
    token_counts = [int(t) for t in args.tokens.split(",")]
    modes = [m.strip() for m in args.recompute.split(",")]
    if bad := [m for m in modes if m not in ("none", "full")]:
        raise ValueError(f"--recompute: got {bad}, each must be 'none' or 'full'")
    peak_tflops = matmul_peak_tflops(args.peak_size, dtype, args.peak_repeats)

    rows, stems, header, fallback = [], {}, None, None
    for mode in modes:
        model, dit, cfg = build_model(args, mode, dtype)
        header = header or environment(args, dtype, peak_tflops, cfg)
        local_attention = isinstance(dit.layers[0].self_attention.core_attention, SDPACoreAttention)
        forced = FORCEABLE.get(args.self_attn_backend) if local_attention else None
        scopes = AttentionScopes(dit.layers, forced)
        probe = FP8Probe(dit.layers, expected=args.fp8 is not None)
        for tokens in token_counts:
            grid = token_grid(tokens, (cfg.model.max_frames, cfg.model.max_height, cfg.model.max_width))
            inputs = make_inputs(cfg, grid)
            try:
                if tokens not in stems:
                    with stem_only(dit):
                        stems[tokens] = measure_step(model, inputs, scopes, args)
                full = measure_step(model, inputs, scopes, args)
                rows.append(block_row(cfg, args.layers, tokens, grid, mode, full, stems[tokens], peak_tflops,
                                      args.spec_peak_tflops))
            except torch.OutOfMemoryError:
                rows.append(failed_row(cfg, tokens, grid, mode, "out of memory"))
            del inputs
            model.zero_grad(set_to_none=True)
            release_memory()
            print(f"done: {tokens} tokens, recompute {mode}", file=sys.stderr, flush=True)
        fallback = fallback or scopes.fallback
        header["fp8"] = probe.check()
        del model, dit, scopes
        release_memory()
        destroy()
    header["self_attention_forced"] = args.self_attn_backend if forced is not None or fallback else None
    header["forced_fallback"] = fallback
    return {"environment": header, "rows": rows}


def report(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"DiT block throughput: {env['recipe']} width (d={env['hidden']}, {env['heads']} heads x {env['head_dim']}, "
        f"ffn {env['ffn']}, {env['text_tokens']} text tokens), {env['layers']} blocks, {env['impl']} spec, "
        f"{env['dtype']}, FP8 {env.get('fp8', 'off')}",
        f"device {env['device']}; torch {env['torch']} (cuda {env['cuda']}); megatron-core {env['megatron_core']}",
        f"matmul peak {env['peak_matmul_tflops']:.1f} TFLOP/s ({env['peak_matmul_size']}^3, best of several); "
        f"timer {env['timer']}, {env['warmup']} warmup + {env['iters']} timed steps, median; memory: {env['memory']}",
    ]
    if env["self_attention_forced"]:
        lines.append(f"self-attention {env['self_attention_forced']} forced: "
                     + (f"FELL BACK ({env['forced_fallback']})" if env["forced_fallback"] else "yes, no fallback"))
    shapes = {r["tokens"]: r["latent_shape"] for r in result["rows"]}
    lines.append("latents (b, c, t, h, w): " + ", ".join(f"{t} tokens <- {tuple(s)}" for t, s in shapes.items()))
    lines += ["", format_table(result["rows"]), ""] + recompute_summary(result["rows"])
    if env["spec_peak_tflops"]:
        ok = [r for r in result["rows"] if r["status"] == "ok"]
        lines += [f"MFU vs datasheet {env['spec_peak_tflops']} TFLOP/s at {r['tokens']} tokens, "
                  f"recompute {r['recompute']}: {100 * r['mfu_spec']:.1f}%" for r in ok]
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    atomic_write_text(path, json.dumps(result, indent=2))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    if args.json:
        write_json(result, args.json)
    print(report(result), flush=True)


if __name__ == "__main__":
    main()
