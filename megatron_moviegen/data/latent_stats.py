"""Per-channel statistics of pre-encoded latents, for an autoencoder's latent_shift / latent_scale (the TAE's, or the
audio autoencoder's: so the DiT's flow, which starts from N(0, I), ends at latents of that scale too).

    shift, scale = latent_stats("data/latents_raw")            # shards encoded with the TAE's raw latents
    write_tae_with_stats("runs/tae/checkpoint", "runs/tae_normalised", shift, scale)
    write_with_stats(AudioAutoencoder, "runs/audio_ae/checkpoint", "runs/audio_ae_normalised", shift, scale)
"""

from __future__ import annotations

from pathlib import Path


from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.utils.io import replacing_folder


def latent_stats(shards_dir: str | Path) -> tuple[list[float], list[float]]:
    """(mean, std) per latent channel over every latent element of every sample in the shards."""
    loader = LatentLoader(shards_dir, batch_size=1, image_fraction=0.0, seed=0)
    total = total_sq = None
    count = 0
    for shard, record in loader.records():
        latents = loader.read_sample(shard, record)["latents"].double()  # (c, t, h, w)
        flat = latents.flatten(1)
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = flat.pow(2).sum(1) if total_sq is None else total_sq + flat.pow(2).sum(1)
        count += flat.shape[1]
    if not count:
        raise ValueError(f"{shards_dir}: no samples to compute latent statistics from")
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


def write_with_stats(autoencoder_class: type, folder: str | Path, out_folder: str | Path, shift: list[float],
                     scale: list[float]) -> Path:
    """The autoencoder (a `models.pretrained.PretrainedAutoencoder`: TAE, AudioAutoencoder) of `folder` with
    latent_shift / latent_scale set, saved to `out_folder` (may be the same)."""
    from dataclasses import replace

    model = autoencoder_class.from_pretrained(folder)
    if model.cfg.latent_shift or model.cfg.latent_scale:
        raise ValueError(f"{folder}: its latents are already normalised (latent_shift/latent_scale set); "
                         f"compute statistics from shards encoded with a {model.display_name} without them")
    normalised = autoencoder_class(replace(model.cfg, latent_shift=tuple(shift), latent_scale=tuple(scale)))
    normalised.load_state_dict(model.state_dict())
    with replacing_folder(out_folder) as staging:  # killed midway, `out_folder` (perhaps `folder`) stays whole
        normalised.save_pretrained(staging)
    return Path(out_folder)


def write_tae_with_stats(tae_folder: str | Path, out_folder: str | Path, shift: list[float],
                         scale: list[float]) -> Path:
    """The TAE of `tae_folder` with latent_shift / latent_scale set, saved to `out_folder` (may be the same)."""
    from megatron_moviegen.models.tae import TAE

    return write_with_stats(TAE, tae_folder, out_folder, shift, scale)
