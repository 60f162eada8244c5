"""benchmarks/dit_throughput.py: the CPU smoke run (as CI runs it) and the pieces it is made of."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "dit_throughput.py"
COLUMNS = ["tokens", "grid t x h x w", "recompute", "ms/block", "TFLOP/s", "MFU %", "gemm TFLOP/s",
           "attn TFLOP/s", "other ms/block", "peak GiB", "act GiB/block", "self-attn"]
POSITIVE = ["ms/block", "TFLOP/s", "MFU %", "gemm TFLOP/s", "attn TFLOP/s", "peak GiB"]


def tiny_block_flops(s: int) -> tuple[int, int]:
    """Forward + backward FLOPs of one tiny block (d=64, f=128, 80+80+16 text tokens), written out by hand."""
    d, f, n = 64, 128, 176
    matmul = 3 * (8 * s * d * d + 4 * s * d * d + 4 * n * d * d + 6 * s * d * f)
    attention = 3 * (4 * s * s * d + 4 * s * n * d)
    return matmul, attention


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dit_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def table_rows(stdout: str) -> list[dict[str, str]]:
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("tokens"))
    dashes = lines[header + 1]
    spans, start = [], 0  # columns are right-aligned under runs of dashes
    for chunk in dashes.split("  "):
        spans.append((start, start + len(chunk)))
        start += len(chunk) + 2
    rows = []
    for line in lines[header + 2:]:
        if not line.strip():
            break
        rows.append({name: line[a:b].strip() for name, (a, b) in zip(COLUMNS, spans)})
    return [{"_header": lines[header]}] + rows


def test_smoke_table_has_every_column_and_positive_numbers(smoke):
    stdout, _ = smoke
    header, *rows = table_rows(stdout)
    for column in COLUMNS:
        assert column in header["_header"], f"column {column!r} missing from {header['_header']!r}"
    assert [(r["tokens"], r["recompute"]) for r in rows] == [("128", "none"), ("512", "none"),
                                                            ("128", "full"), ("512", "full")]
    for row in rows:
        for column in POSITIVE:
            assert float(row[column]) > 0, f"{column} = {row[column]!r} in {row}"
        assert row["grid t x h x w"] == {"128": "2x8x8", "512": "2x16x16"}[row["tokens"]]
        assert row["self-attn"].startswith("flash"), row
    assert "self-attention flash forced: yes, no fallback" in stdout
    assert "recompute full vs none at 512 tokens: time x" in stdout


def test_smoke_json_flops_and_rates_are_consistent(smoke):
    _, result = smoke
    env = result["environment"]
    assert (env["hidden"], env["heads"], env["text_tokens"], env["layers"]) == (64, 4, 176, 2)
    assert env["memory"] == "cpu RSS sampled every 1 ms" and env["timer"] == "time.perf_counter"
    for row in result["rows"]:
        matmul, attention = tiny_block_flops(row["tokens"])
        flops = row["flops_per_block"]
        assert (flops["matmul"], flops["attention"]) == (matmul, attention)
        assert row["tflops"] == pytest.approx((matmul + attention) / (row["ms_per_block"] * 1e-3) / 1e12)
        assert row["mfu"] == pytest.approx(row["tflops"] / env["peak_matmul_tflops"])
        busy = row["busy_ms_per_block"]
        assert row["gemm_tflops"] == pytest.approx(matmul / (busy["gemm"] * 1e-3) / 1e12)
        assert row["ms_per_block"] == pytest.approx((row["model_ms"] - row["stem_ms"]) / 2)
        assert row["latent_shape"] == [1, 16] + [2 * g if i else g for i, g in enumerate(row["grid"])]


def test_token_grids_of_the_30b_recipe(bench):
    tables = (32, 48, 48)  # t2v_30b position tables, in tokens
    assert bench.token_grid(73728, tables) == (32, 48, 48)
    assert bench.token_grid(32768, tables) == (32, 32, 32)
    assert bench.token_grid(8192, tables) == (8, 32, 32)
    assert bench.token_grid(74, tables) == (1, 37, 2)  # no square fits: the largest h x w
    with pytest.raises(ValueError, match="t <= 32, h <= 48, w <= 48"):
        bench.token_grid(73728 * 2, tables)


@pytest.mark.parametrize("name, bucket", [
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>, false>(Flash_fwd_params)",
     "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
    ("nvjet_hsh_256x128_64x4_2x1_v_bz_coopA_NTN", "gemm"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "other"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float>>>",
     "other"),
])
def test_kernels_are_bucketed_by_name(bench, name, bucket):
    assert bench.classify_kernel(name) == bucket


def test_a_refused_forced_kernel_is_reported_and_the_run_goes_on(tmp_path):
    out = tmp_path / "fallback.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--tokens", "128", "--recompute", "none",
                           "--self-attn-backend", "cudnn", "--json", str(out)],  # no cuDNN attention on CPU
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "self-attention cudnn forced: FELL BACK (" in proc.stdout
    result = json.loads(out.read_text())
    assert result["environment"]["forced_fallback"]
    (row,) = result["rows"]
    assert row["status"] == "ok" and row["self_attention_kernel"] != "cudnn" and row["ms_per_block"] > 0
