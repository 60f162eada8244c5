"""Latent normalisation: statistics from raw shards, a TAE that carries them, re-encoded shards at unit scale."""

import json

import torch

from megatron_moviegen.config.schema import build
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.data.latent_stats import latent_stats, write_tae_with_stats
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.inference.components import load_tae, tiny_tae
from megatron_moviegen.models.toy_encoders import TAEVideoEncoder, TinyTextEncoders
from megatron_moviegen.recipes import load_config


def _preencode(tae_folder, manifest, out):
    config = build(DataConfig, {"buckets": {"resolution": 64, "aspect_ratios": ["16:9"], "durations_s": [2.0],
                                            "max_upscale": 2.0, "include_images": False},
                                "shard_size": 2, "num_workers": 0, "latent_dtype": "float32", "image_fraction": 0.0})
    text = TinyTextEncoders.for_model(load_config("tiny").model)
    Preencoder(config, TAEVideoEncoder(load_tae(str(tae_folder))), text, out).run(read_manifest(manifest))


def test_normalised_tae_encodes_shards_at_zero_mean_unit_std_and_decodes_the_same(clips, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": str(clips / n), "caption": n}) + "\n"
                                for n in ("bigbuckbunny.mp4", "bikes.mp4")))
    tiny_tae().save_pretrained(tmp_path / "tae")
    _preencode(tmp_path / "tae", manifest, tmp_path / "raw")
    shift, scale = latent_stats(tmp_path / "raw")
    assert len(shift) == len(scale) == 16 and max(abs(s - 1) for s in scale) > 0.05  # raw latents are not N(0, 1)
    write_tae_with_stats(tmp_path / "tae", tmp_path / "normalised", shift, scale)

    _preencode(tmp_path / "normalised", manifest, tmp_path / "normalised_shards")
    mean, std = latent_stats(tmp_path / "normalised_shards")
    assert max(abs(m) for m in mean) < 1e-4 and max(abs(s - 1) for s in std) < 1e-4

    raw, normalised = load_tae(str(tmp_path / "tae")), load_tae(str(tmp_path / "normalised"))
    assert normalised.cfg.latent_shift == tuple(shift) and normalised.cfg.latent_scale == tuple(scale)
    z = torch.randn(1, 16, 1, 4, 4)
    assert torch.allclose(normalised.denormalize_latents(normalised.normalize_latents(z)), z, atol=1e-5)
    assert torch.allclose(normalised.normalize_latents(z)[:, 3], (z[:, 3] - shift[3]) / scale[3], atol=1e-6)
    assert torch.equal(raw.normalize_latents(z), z)  # no statistics: identity
