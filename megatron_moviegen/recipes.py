"""The run configuration (`MovieGenConfig`): one dataclass per concern, loaded from YAML recipes with dotted overrides.

    cfg = load_config("tiny", ["model.num_layers=4", "parallel.tensor_model_parallel_size=2"])
    print(to_yaml(cfg))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from megatron_moviegen.config.schema import ConfigError, load_recipe
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.diffusion.flow_matching import FlowMatchingConfig
from megatron_moviegen.kinds import kind_of
from megatron_moviegen.models.dit_config import DiTConfig, check_model_fits_layout
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.text.config import TextEncodersConfig
from megatron_moviegen.training.config import TrainConfig

RECIPE_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class MovieGenConfig:
    name: str = "unnamed"
    # The model kind (megatron_moviegen/kinds/: t2v, upsample, edit, personalize, audio, or a registered one); unset
    # (recipes and exports written before kinds): the kind its data section implies (kinds.kind_of).
    kind: Optional[str] = None
    model: DiTConfig = field(default_factory=DiTConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        check_model_fits_layout(self.model, self.parallel)


def check_text_encoders(text: TextEncodersConfig, model: DiTConfig) -> None:
    """The text encoders about to run produce what the DiT reads: the same encoders, each with the DiT's
    `model.text_encoders.<name>.max_length` (the one source of those lengths)."""
    running, expected = set(text.encoders()), set(model.text_encoders)
    if running != expected:
        raise ConfigError(f"text encoders: enabled {sorted(running)}, the model reads {sorted(expected)} "
                          "(model.text_encoders)")
    for name, encoder in text.encoders().items():
        wanted = model.text_encoders[name].max_length
        if encoder.max_length != wanted:
            raise ConfigError(f"text encoder {name}: max_length {encoder.max_length}, but "
                              f"model.text_encoders.{name}.max_length is {wanted}")


def check_text_encoder_widths(text: TextEncodersConfig, model: DiTConfig) -> None:
    """Each encoder's hidden width, read from its config.json alone (no weights load, nothing downloads offline), is
    the width the DiT projects from (`model.text_encoders.<name>.width`)."""
    from transformers import AutoConfig

    from megatron_moviegen.utils.hub import hub_offline

    for name, encoder in text.encoders().items():
        try:
            config = AutoConfig.from_pretrained(encoder.path, subfolder=encoder.subfolder or "",
                                                local_files_only=hub_offline())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"text encoder {name}: cannot read the config of {encoder.path!r} ({exc})") from None
        config = getattr(config, "text_config", None) or config  # a whole CLIPModel: its text tower
        width = getattr(config, "d_model", None) or getattr(config, "hidden_size", None)
        wanted = model.text_encoders[name].width
        if width != wanted:
            raise ConfigError(f"text encoder {name}: {encoder.path} gives {width}-wide embeddings, but the model was "
                              f"trained on {wanted}-wide ones (model.text_encoders.{name}.width); use the encoder it was "
                              "trained with")


def load_config(recipe: str | Path, overrides: list[str] | None = None) -> MovieGenConfig:
    """Load a named recipe (`tiny`, `t2v_30b`, ...) or a YAML path, then apply `a.b=value` overrides.

    A recipe is a training run, so its model must hold every bucket it trains and its sample videos, and its
    layout split each bucket's tokens evenly (checked here, not in MovieGenConfig.validate: an export folder's
    config is only a model, whatever data it was trained on). A recipe given as a YAML path is named in its errors
    (a file cut short may still parse, into values that do not fit)."""
    try:
        return _checked_config(recipe, overrides)
    except ConfigError as exc:
        if Path(recipe).suffix not in (".yaml", ".yml") or str(recipe) in str(exc):
            raise
        raise ConfigError(f"recipe {recipe}: {exc}") from None


def _checked_config(recipe: str | Path, overrides: list[str] | None) -> MovieGenConfig:
    cfg = load_recipe(MovieGenConfig, recipe, RECIPE_DIR, overrides)
    kind_of(cfg).check(cfg)
    return cfg


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
