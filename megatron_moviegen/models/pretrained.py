"""What our autoencoders (the TAE, the audio autoencoder) share beyond their layers:

- the folder format: `config.json` (the model's config dataclass) and `model.safetensors`, each written atomically;
  read from a local path or a Hub id (with `subfolder`, offline-safe), diffusers' weight file name accepted too;
- the DiT's latent space: per-channel `latent_shift` / `latent_scale` in the config (data/latent_stats.py), so the
  DiT's flow from N(0, I) ends at latents of that scale.

    class TAE(PretrainedAutoencoder, nn.Module): config_class = TAEConfig; ...
    tae = TAE.from_pretrained("runs/tae/checkpoint"); z = tae.normalize_latents(tae.encode(x).mode())
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from megatron_moviegen.config.schema import ConfigError, build, to_dict
from megatron_moviegen.utils.hub import resolve_pretrained_folder
from megatron_moviegen.utils.io import DamagedFileError, atomic_output, atomic_write_text, read_json_file, reading

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAMES = (WEIGHTS_NAME, "diffusion_pytorch_model.safetensors")  # ours, diffusers'


def save_pretrained(module: nn.Module, config: Any, path: str | Path) -> None:
    """Write config.json (`config`, a dataclass) and model.safetensors (`module`'s state) into folder `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / CONFIG_NAME, json.dumps(to_dict(config), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_output(path / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))


def read_pretrained(path: str | Path, config_cls: type, subfolder: str | None = None,
                    cache_dir: str | Path | None = None, what: str = "model") -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, state dict) of a folder written by `save_pretrained` (or a diffusers-style one: config keys starting
    with '_' are skipped), a local path or a Hub id; `what` names the model in errors."""
    folder = resolve_pretrained_folder(path, subfolder, cache_dir, what=what)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{what} {str(folder)!r}: no {CONFIG_NAME}")
    saved = read_json_file(folder / CONFIG_NAME, f"{what} config")
    config = {k: v for k, v in saved.items() if not k.startswith("_")}
    weights = next((folder / name for name in WEIGHTS_NAMES if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{what} {str(folder)!r}: no {' or '.join(WEIGHTS_NAMES)}")
    with reading(weights, f"{what} weights (safetensors)"):
        state = load_file(str(weights))
    try:
        return build(config_cls, config), state
    except ConfigError as exc:
        raise DamagedFileError(f"{folder / CONFIG_NAME}: {what} config: {exc}") from None


class PretrainedAutoencoder:
    """Mixed into an autoencoder `nn.Module` whose `cfg` (of `config_class`) has latent_channels, latent_shift and
    latent_scale (empty tuples: identity); latents are (b, c, ...) in any layout with channels second."""

    config_class: type
    display_name: str = "autoencoder"

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors into folder `path` (each atomically)."""
        save_pretrained(self, self.cfg, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, subfolder: str | None = None, cache_dir: str | Path | None = None):
        """A folder written by `save_pretrained` (or a diffusers-format one), a local path or a Hugging Face Hub id,
        optionally in `subfolder` (offline-safe: with HF_HUB_OFFLINE=1 only the local hub cache is read)."""
        config, state = read_pretrained(path, cls.config_class, subfolder, cache_dir, what=cls.display_name)
        model = cls(config)
        model.load_state_dict(state)
        return model

    def _channel_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg.latent_channels
        shape = (1, c) + (1,) * (like.dim() - 2)
        shift = torch.tensor(self.cfg.latent_shift or [0.0] * c, dtype=like.dtype, device=like.device)
        scale = torch.tensor(self.cfg.latent_scale or [1.0] * c, dtype=like.dtype, device=like.device)
        return shift.view(shape), scale.view(shape)

    def normalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Encoder latents (b, c, ...) -> the DiT's: (z - latent_shift) / latent_scale per channel."""
        shift, scale = self._channel_stats(latents)
        return (latents - shift) / scale

    def denormalize_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's latents (b, c, ...) -> the decoder's: z * latent_scale + latent_shift per channel."""
        shift, scale = self._channel_stats(latents)
        return latents * scale + shift


def check_latent_stats(config: Any) -> None:
    """The latent_shift / latent_scale rule of a config with latent_channels (raises ConfigError)."""
    from megatron_moviegen.config.schema import ConfigError

    for name in ("latent_shift", "latent_scale"):
        if len(getattr(config, name)) not in (0, config.latent_channels):
            raise ConfigError(f"{name}: got {len(getattr(config, name))} values, need 0 (identity) or "
                              f"latent_channels={config.latent_channels}")
    if any(s <= 0 for s in config.latent_scale):
        raise ConfigError(f"latent_scale: got {list(config.latent_scale)}, every value must be > 0")
