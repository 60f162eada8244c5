"""The TAE as a diffusers model (`ModelMixin` + `ConfigMixin`): the training TAE itself (`models/tae.py`, same
modules, same tensor names, same encode / decode with tiling and latent shift / scale), saved and loaded the
diffusers way (config.json + diffusion_pytorch_model.safetensors, Hub ids, `subfolder=`).

    vae = MovieGenTAEModel.from_pretrained("out", subfolder="vae")
    pixels = vae.decode_video(latents, num_frames=t)   # the DiT's latents -> (b, 3, t, h, w) float32 in [-1, 1]

Decoding is tiled in time and space by default, as `generate` decodes (the paper's TAE decodes in overlapping
temporal tiles); diffusers' switches change that: `disable_tiling()` decodes whole, `enable_tiling(spatial_tile_size=
192, ...)` sets tile sizes (TAEConfig's tiling fields), `enable_slicing()` decodes one video of a batch at a time.

`TAE.from_pretrained` reads the same folder, so a pipeline's vae/ is also a TAE folder for pre-encoding and
`generate --tae`.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.autoencoders.vae import AutoencoderMixin

from megatron_moviegen.config.schema import ConfigError, build, to_dict
from megatron_moviegen.inference.pipeline import decode_latents
from megatron_moviegen.models.tae import TAE, TAEConfig

TILING_FIELDS = ("decoder_tile_latent_frames", "decoder_tile_overlap_latent_frames", "spatial_tile_size",
                 "spatial_tile_overlap")


class MovieGenTAEModel(TAE, ModelMixin, ConfigMixin, AutoencoderMixin):
    """Config: the `TAEConfig` fields."""

    config_name = "config.json"

    def __init__(self, **config):
        cfg = build(TAEConfig, config)
        super().__init__(cfg)
        self.register_to_config(**to_dict(cfg))
        self.use_tiling, self.use_slicing = True, False

    def enable_tiling(self, **tile_sizes: int) -> None:
        """Tiled decoding (the default), with TAEConfig's tile sizes changed by `tile_sizes` (TILING_FIELDS)."""
        unknown = sorted(set(tile_sizes) - set(TILING_FIELDS))
        if unknown:
            raise ConfigError(f"enable_tiling: got {unknown}, expected some of {list(TILING_FIELDS)}")
        cfg = dataclasses.replace(self.cfg, **tile_sizes)
        cfg.validate()
        self.cfg, self.use_tiling = cfg, True

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The DiT's latents (b, 16, T, h, w) (denormalised here) -> pixels (b, 3, num_frames, 8h, 8w) float32 in
        [-1, 1]: tiled as `generate` decodes unless tiling is disabled, one video at a time with slicing."""
        videos = latents.split(1) if self.use_slicing else [latents]
        return torch.cat([self._decode_one(video, num_frames) for video in videos])

    def _decode_one(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.use_tiling:
            return decode_latents(self, latents, num_frames)
        latents = self.denormalize_latents(latents.to(self.device)).to(self.dtype)
        return self.decode(latents, num_frames).float().clamp(-1.0, 1.0)

    # diffusers' saving and loading, not TAE's (which come first in the method order).
    save_pretrained = ModelMixin.save_pretrained
    from_pretrained = ModelMixin.__dict__["from_pretrained"]

    @classmethod
    def from_tae(cls, tae: TAE) -> "MovieGenTAEModel":
        model = cls(**to_dict(tae.cfg))
        model.load_state_dict(tae.state_dict())
        return model


# ConfigMixin reads the accepted config keys off __init__'s signature: they are TAEConfig's fields.
MovieGenTAEModel.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                         default=f.default if f.default is not dataclasses.MISSING else f.default_factory())
       for f in dataclasses.fields(TAEConfig)])
