"""The TAE as a diffusers model (`ModelMixin` + `ConfigMixin`): the training TAE itself (`models/tae.py`, same
modules, same tensor names, same encode / decode with tiling and latent shift / scale), saved and loaded the
diffusers way (config.json + diffusion_pytorch_model.safetensors, Hub ids, `subfolder=`).

    vae = MovieGenTAEModel.from_pretrained("out", subfolder="vae")
    pixels = vae.decode(vae.denormalize_latents(latents), num_frames=t, tiled=True)   # (b, 3, t, h, w) in [-1, 1]

`TAE.from_pretrained` reads the same folder, so a pipeline's vae/ is also a TAE folder for pre-encoding and
`generate --tae`.
"""

from __future__ import annotations

import dataclasses
import inspect

from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin

from megatron_moviegen.config.schema import build, to_dict
from megatron_moviegen.models.tae import TAE, TAEConfig


class MovieGenTAEModel(TAE, ModelMixin, ConfigMixin):
    """Config: the `TAEConfig` fields."""

    config_name = "config.json"

    def __init__(self, **config):
        cfg = build(TAEConfig, config)
        super().__init__(cfg)
        self.register_to_config(**to_dict(cfg))

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
