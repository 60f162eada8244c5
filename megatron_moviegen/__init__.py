"""megatron_moviegen: Movie Gen training on Megatron-Core."""

import warnings

# Megatron-Core warns on import when TransformerEngine and apex are absent; our local layer spec is the CPU path.
warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

__version__ = "0.1.0"
