"""The toy byte-level text encoder (models/toy_encoders.py) as a diffusers model, so a pipeline exported from a
tiny CPU model carries its text encoders like any other component. The paper's encoders are exported as the
transformers models they are (T5EncoderModel, CLIPTextModel) with their tokenizers.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.models.toy_encoders import embed_bytes
from megatron_moviegen.text.prompts import byt5_text


class MovieGenByteTextEncoder(ModelMixin, ConfigMixin):
    """Fixed tables over UTF-8 bytes and positions; `quoted_text_only` reads only a prompt's quoted text (ByT5's
    rule), else the whole prompt."""

    @register_to_config
    def __init__(self, width: int = 32, max_length: int = 80, quoted_text_only: bool = False):
        super().__init__()
        self.byte_table = nn.Parameter(torch.zeros(256, width), requires_grad=False)
        self.positions = nn.Parameter(torch.zeros(max_length, width), requires_grad=False)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Tokens:
        """prompts -> Tokens((b, max_length, width), (b, max_length) bool, True = real)."""
        texts = [byt5_text(p) if self.config.quoted_text_only else p for p in prompts]
        device = self.byte_table.device
        return embed_bytes(texts, self.byte_table.cpu(), self.positions.cpu()).map(lambda t: t.to(device))
