"""Text -> encoders -> embeddings: the three frozen text encoders of Movie Gen (UL2, MetaCLIP, ByT5)."""

from megatron_moviegen.text.config import EncoderConfig, TextEncodersConfig
from megatron_moviegen.text.encoders import FrozenTextEncoder, TextEncoders
from megatron_moviegen.text.prompts import add_fps_prefix, byt5_text, extract_quoted_text

__all__ = [
    "EncoderConfig",
    "TextEncodersConfig",
    "TextEncoders",
    "FrozenTextEncoder",
    "add_fps_prefix",
    "byt5_text",
    "extract_quoted_text",
]
