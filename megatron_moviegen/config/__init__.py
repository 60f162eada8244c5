"""Configuration: YAML recipes (megatron_moviegen/configs/) -> validated dataclasses, with dotted overrides.

    from megatron_moviegen.config import load_config, to_yaml
    cfg = load_config("tiny", ["model.num_layers=4", "parallel.tensor_model_parallel_size=2"])
    print(to_yaml(cfg))

The section dataclasses live beside the code they configure (models/dit_config.py, data/config.py, ...) and
import `config.schema`; the whole-run config is imported lazily here so that those imports stay acyclic.
"""

from megatron_moviegen.config.schema import ConfigError, to_dict, to_yaml

_RUN_CONFIG_NAMES = {
    "MovieGenConfig", "DiTConfig", "ParallelConfig", "TrainConfig", "DataConfig", "FlowMatchingConfig",
    "TextEncodersConfig", "load_config", "available_recipes", "RECIPE_DIR",
}


def __getattr__(name: str):
    if name in _RUN_CONFIG_NAMES:
        from megatron_moviegen.config import run_config

        return getattr(run_config, name)
    raise AttributeError(f"module 'megatron_moviegen.config' has no attribute {name!r}")


__all__ = ["ConfigError", "to_dict", "to_yaml", *sorted(_RUN_CONFIG_NAMES)]
