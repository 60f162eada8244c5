"""Configuration machinery: dataclasses <-> YAML recipes, dotted overrides, validation naming the field.

The section dataclasses live beside the code they configure (models/dit_config.py, parallel/config.py, ...);
the whole-run config and the recipe loader are in `megatron_moviegen.recipes`, one room above them.
"""

from megatron_moviegen.config.schema import ConfigError, to_dict, to_yaml

__all__ = ["ConfigError", "to_dict", "to_yaml"]
