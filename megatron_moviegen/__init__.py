"""megatron_moviegen: Movie Gen training on Megatron-Core."""

__version__ = "0.1.0"
