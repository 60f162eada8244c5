"""Inflate a diffusers-format image AutoencoderKL (FLUX.1 / SD3 style, 16 latent channels) into a TAE.

Spatial weights are copied one to one; temporal layers keep their initialisation (identity temporal convs,
zero temporal-attention output), so a 1-frame video goes through the TAE exactly as through the image VAE.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from megatron_moviegen.config.schema import ConfigError, build, to_dict
from megatron_moviegen.models.tae import TAE, TAEConfig

VAE_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def tae_from_image_vae(path: str | Path, **tiling) -> TAE:
    """Inflate a diffusers AutoencoderKL folder (config.json + safetensors); an image then passes exactly as
    through the image VAE. `tiling` overrides TAEConfig tile fields."""
    vae_config, vae_state = read_image_vae(Path(path))
    model = TAE(build(TAEConfig, {**to_dict(image_vae_config(vae_config)), **tiling}))
    model.load_state_dict(inflate_state_dict(model.state_dict(), vae_state))
    return model


def read_image_vae(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json contents, state dict) of a diffusers AutoencoderKL folder."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path}: no config.json; expected a diffusers AutoencoderKL folder")
    config = json.loads(config_file.read_text())
    for name in VAE_WEIGHT_NAMES:
        if (path / name).exists():
            return config, load_file(str(path / name))
    raise FileNotFoundError(f"{path}: none of {VAE_WEIGHT_NAMES} found")


def image_vae_config(vae: dict):
    """TAEConfig with the architecture of a diffusers AutoencoderKL config."""
    if vae.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ConfigError(f"_class_name: got {vae['_class_name']!r}, expected 'AutoencoderKL'")
    if vae.get("act_fn", "silu") != "silu":
        raise ConfigError(f"act_fn: got {vae['act_fn']!r}, the TAE uses 'silu'")
    if vae.get("use_quant_conv", True) != vae.get("use_post_quant_conv", True):
        raise ConfigError("use_quant_conv and use_post_quant_conv differ; the TAE needs both or neither")
    channels = list(vae["block_out_channels"])
    if any(c % channels[0] for c in channels):
        raise ConfigError(f"block_out_channels: got {channels}, each must be a multiple of the first")
    return TAEConfig(
        in_channels=vae.get("in_channels", 3),
        latent_channels=vae["latent_channels"],
        base_channels=channels[0],
        channel_multipliers=tuple(c // channels[0] for c in channels),
        num_res_blocks=vae.get("layers_per_block", 1),
        norm_groups=vae.get("norm_num_groups", 32),
        mid_attention=vae.get("mid_block_add_attention", True),
        use_quant_conv=vae.get("use_quant_conv", True),
    )


def image_vae_key(key: str) -> str | None:
    """The diffusers AutoencoderKL key of a TAE parameter, or None for a temporal layer."""
    if ".temporal." in key:
        return None
    key = re.sub(r"(downsamplers|upsamplers)\.0\.spatial\.", r"\1.0.conv.", key)
    key = key.replace(".spatial.to_out.", ".to_out.0.")
    return key.replace(".spatial.", ".")


def inflate_state_dict(tae_state: dict[str, torch.Tensor], vae_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TAE state dict with every spatial tensor taken from the image VAE; temporal tensors as initialised."""
    out, used = {}, set()
    for key, value in tae_state.items():
        vae_key = image_vae_key(key)
        if vae_key is None:
            out[key] = value
            continue
        if vae_key not in vae_state:
            raise KeyError(f"image VAE has no {vae_key!r} (needed for TAE {key!r}); is it a diffusers AutoencoderKL?")
        if vae_state[vae_key].shape != value.shape:
            raise ValueError(f"{vae_key}: image VAE shape {tuple(vae_state[vae_key].shape)}, TAE needs {tuple(value.shape)}")
        out[key] = vae_state[vae_key]
        used.add(vae_key)
    unused = sorted(set(vae_state) - used)
    if unused:
        raise KeyError(f"image VAE tensors with no TAE counterpart: {unused[:5]}{' ...' if len(unused) > 5 else ''}")
    return out
