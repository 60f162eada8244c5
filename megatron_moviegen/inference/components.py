"""The TAE and the text encoders that generation decodes and conditions with, by name or folder.

- TAE: a folder written by `TAE.save_pretrained` (e.g. `runs/tae_tiny/checkpoint`), an exported diffusers
  pipeline's vae/ folder, a Hub id, or "toy-tae": a DEMO decoder,
  configs/tae/tae_tiny.yaml's model freshly initialised with a fixed seed. It is untrained: its videos show
  the pipeline works end to end, not what the DiT learned.
- Text encoders: "paper" (those of `TextEncodersConfig` the DiT reads: UL2, MetaCLIP and ByT5 for video, T5 for audio;
  paths via dotted overrides such as `ul2.path=/models/ul2`), or "toy": `TinyTextEncoders` shaped to the checkpoint's text inputs (CPU demos,
  tests).
"""

from __future__ import annotations


import torch

from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.models.dit_config import DiTConfig
from megatron_moviegen.models.tae import CONFIG_NAME, TAE, WEIGHTS_NAME, WEIGHTS_NAMES
from megatron_moviegen.recipes import check_text_encoder_widths, check_text_encoders
from megatron_moviegen.text import TextEncoders
from megatron_moviegen.text.config import text_encoders_for_model
from megatron_moviegen.training.train_tae import load_tae_config
from megatron_moviegen.utils.hub import resolve_pretrained_folder

TOY_TAE, TOY_TEXT_ENCODERS = "toy-tae", "toy"  # the names pre-encoding uses for the same toys
TINY_TAE_SEED = 0


def tiny_tae(seed: int = TINY_TAE_SEED) -> TAE:
    """configs/tae/tae_tiny.yaml's TAE with random weights from `seed` (an untrained demo decoder)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TAE(load_tae_config("tae_tiny").model)


def load_tae(source: str, device: torch.device | str = "cpu", subfolder: str | None = None) -> TAE:
    """"toy-tae", a save_pretrained folder (ours, or a diffusers pipeline's vae/), or a Hugging Face Hub id (with
    `subfolder`, e.g. "vae") -> the TAE in eval mode on `device`."""
    if source == TOY_TAE:
        tae = tiny_tae()
    else:
        folder = resolve_pretrained_folder(source, subfolder, what="TAE")
        missing = [] if (folder / CONFIG_NAME).is_file() else [CONFIG_NAME]
        if not any((folder / name).is_file() for name in WEIGHTS_NAMES):
            missing.append(" or ".join(WEIGHTS_NAMES))
        if missing:
            raise FileNotFoundError(f"TAE {str(folder)!r}: expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME} "
                                    f"(TAE.save_pretrained), missing {missing}; or use 'toy-tae' for an untrained demo decoder")
        tae = TAE.from_pretrained(folder)
    return tae.to(device).eval().requires_grad_(False)


def recorded_encoders(model: DiTConfig) -> dict[str, dict[str, str]]:
    """{role: record} of the encoders the model's shards were encoded with (pre-encoding's record, copied into every
    checkpoint and export: name, weights sha256 and, since it is recorded, `source` and the text `overrides`)."""
    return dict(model.trained_encoders or {})


def default_sources(tae: str | None, kind: str | None, overrides: list[str], model: DiTConfig
                    ) -> tuple[str, str, list[str]]:
    """(TAE, text-encoder kind, text overrides) for generation: what the user gave, else what the model was trained
    with (`recorded_encoders`), else an error naming the flag. Recorded text overrides apply only when the user gives
    neither a kind nor overrides."""
    recorded = recorded_encoders(model)
    if tae is None:
        tae = recorded.get("video", {}).get("source")
        if tae is None:
            raise ValueError("--tae: not given, and the export records no TAE (trained on shards from before encoders "
                             "were recorded); give the TAE folder the shards were encoded with")
    if kind is None:
        text = recorded.get("text", {})
        kind = text.get("source", "paper")
        if not overrides and text.get("overrides"):
            overrides = text["overrides"].splitlines()
    return tae, kind, list(overrides)


def load_text_encoders(kind: str, overrides: list[str], model: DiTConfig):
    """"toy" or "paper" (with `field=value` overrides of TextEncodersConfig) -> an object with
    `.encode(prompts) -> {name: (embeddings (b, n, d), mask (b, n) bool)}` matching the DiT's text inputs. The paper
    encoders' widths are checked against the model from their config files before any weights load."""
    if kind == TOY_TEXT_ENCODERS:
        if overrides:
            raise ValueError(f"text-encoder overrides {overrides} apply to the paper encoders, not 'toy'")
        return TinyTextEncoders.for_model(model)
    return TextEncoders(paper_text_encoders(kind, overrides, model))


def paper_text_encoders(kind: str, overrides: list[str], model: DiTConfig):
    """The TextEncodersConfig of `kind` "paper" for `model`, checked (names, lengths, and each encoder's width from its
    config file) without loading any weights: what the commands call before the DiT loads."""
    if kind != "paper":
        raise ValueError(f"text encoders: got {kind!r}, expected 'paper' or 'toy'")
    config = text_encoders_for_model(overrides, model.text_encoders)
    check_text_encoders(config, model)
    check_text_encoder_widths(config, model)
    return config
