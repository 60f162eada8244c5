"""The run configuration (`MovieGenConfig`): one dataclass per concern, loaded from YAML recipes with dotted overrides.

    cfg = load_config("tiny", ["model.num_layers=4", "parallel.tensor_model_parallel_size=2"])
    print(to_yaml(cfg))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megatron_moviegen.config.schema import ConfigError, load_recipe
from megatron_moviegen.data.buckets import check_audio_buckets, check_buckets_fit_model, check_buckets_split_evenly
from megatron_moviegen.data.config import REFERENCE_SOURCE, DataConfig
from megatron_moviegen.diffusion.flow_matching import FlowMatchingConfig
from megatron_moviegen.models.dit_config import DiTConfig, check_model_fits_layout
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.text.config import TextEncodersConfig
from megatron_moviegen.training.config import TrainConfig

RECIPE_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class MovieGenConfig:
    name: str = "unnamed"
    model: DiTConfig = field(default_factory=DiTConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    flow: FlowMatchingConfig = field(default_factory=FlowMatchingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        check_model_fits_layout(self.model, self.parallel)


def check_conditions_fit_model(data: DataConfig, model: DiTConfig) -> None:
    """What pre-encoding writes besides text (data.upsample / data.edit / data.reference) is what the DiT reads:
    condition channels of one latent each, one task-table row per data.edit task, and the reference image's tokens
    as model.extra_context.reference_image."""
    if data.audio is not None:
        if model.condition_channels < 1:
            raise ConfigError(f"model.condition_channels: got {model.condition_channels}, but data.audio gives the DiT "
                              "per-frame video features (the width of data.audio.video_encoder)")
        return check_no_video_conditions(model)
    if model.infill:
        raise ConfigError("model.infill: true, but infilling is for data.audio models")
    channels = model.latent_channels if data.upsample is not None or data.edit is not None else 0
    if model.condition_channels != channels:
        made = "data.upsample" if data.upsample else "data.edit" if data.edit else "neither data.upsample nor data.edit"
        raise ConfigError(f"model.condition_channels: got {model.condition_channels}, but {made} gives the DiT "
                          f"{channels} condition channels")
    wanted = model.extra_context.get(REFERENCE_SOURCE)
    if (data.reference is None) != (wanted is None):
        raise ConfigError(f"model.extra_context.{REFERENCE_SOURCE} and data.reference must be set together (the "
                          "reference image's tokens are written by pre-encoding and read by the DiT); got "
                          f"{'only the model entry' if wanted else 'only data.reference'}")
    if wanted is not None and wanted.max_length != data.reference.max_length:
        raise ConfigError(f"model.extra_context.{REFERENCE_SOURCE}.max_length: {wanted.max_length}, but "
                          f"data.reference.max_length is {data.reference.max_length}")
    if wanted is not None and data.reference.trainable != (wanted.encoder is not None):
        raise ConfigError(f"data.reference.trainable is {data.reference.trainable}, but model.extra_context."
                          f"{REFERENCE_SOURCE}.encoder is {'set' if wanted.encoder else 'not set'}: a trainable tower "
                          "is part of the DiT (its shape in the model config), a frozen one is not")
    tasks = 0 if data.edit is None else len(data.edit.tasks)
    if model.num_tasks != tasks:
        raise ConfigError(f"model.num_tasks: got {model.num_tasks}, but data.edit.tasks lists {tasks} task(s)")


def check_no_video_conditions(model: DiTConfig) -> None:
    """An audio model (data.audio) has no extra context source or task table: it reads text tokens, video features
    and its infill."""
    if model.extra_context or model.num_tasks:
        raise ConfigError(f"model.extra_context {sorted(model.extra_context)} / num_tasks {model.num_tasks}: an audio "
                          "model (data.audio) reads text tokens, video features and its infill only")


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
    check_conditions_fit_model(cfg.data, cfg.model)
    if cfg.data.audio is not None:
        if cfg.train.samples is not None:
            raise ConfigError("train.samples: sample videos while training are for video models, not data.audio")
        check_audio_buckets(cfg.data.audio, cfg.model, cfg.parallel)
        return cfg
    check_buckets_fit_model(cfg.data.buckets, cfg.model)
    if cfg.train.samples is not None:
        cfg.train.samples.check_fits(cfg.model, cfg.parallel)
    check_buckets_split_evenly(cfg.data.buckets, cfg.model, cfg.parallel)
    return cfg


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
