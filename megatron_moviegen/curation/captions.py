"""Where a clip's caption comes from, in this order:
1. a sidecar text file beside the video: `<video stem>.<clip number>.txt` for one clip, else `<video stem>.txt`;
2. `ModelCaptions`, when `analysis.captioner` names one: a local transformers image-text-to-text folder (BLIP,
   LLaVA, Qwen2-VL, SmolVLM, ...) captioning the clip's middle frame, greedily (the same frame, the same caption);
3. none (captioner "none"): the stages remove the clip (pre-encoding needs a caption).
The clip's record names which one it was (`captioner`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from megatron_moviegen.curation.config import AnalysisConfig
from megatron_moviegen.utils.hub import hub_offline, resolve_pretrained_folder


def sidecar_caption(video: Path, clip_number: int) -> tuple[Optional[str], dict]:
    """(caption or None, the captioner record: the file it came from)."""
    for candidate in (video.with_name(f"{video.stem}.{clip_number}.txt"), video.with_suffix(".txt")):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text, {"name": "sidecar", "file": candidate.name}
    return None, {"name": "none"}


class ModelCaptions:
    """A vision-language model folder (or a Hub id already in the cache) that captions one RGB frame on CPU."""

    def __init__(self, model: str, prompt: str, max_new_tokens: int):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = resolve_pretrained_folder(model, what="captioner")
        self.record = {"name": "model", "model": str(model), "prompt": prompt}
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=hub_offline())
        self.model = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=hub_offline()).eval()

    def _text(self) -> Optional[str]:
        """The prompt in the model's chat template with an image slot; None (plain captioning, e.g. BLIP) without
        a template."""
        if not getattr(self.processor, "chat_template", None):
            return None
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    @torch.no_grad()
    def caption(self, frame: np.ndarray) -> str:
        """(h, w, 3) uint8 RGB -> the model's caption."""
        text = self._text()
        inputs = self.processor(images=[Image.fromarray(frame)], text=text, return_tensors="pt")
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if text is not None and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1]:]  # a decoder-only model repeats the prompt
        return self.processor.batch_decode(out, skip_special_tokens=True)[0].strip()


@lru_cache(maxsize=1)
def load_captioner(model: str, prompt: str, max_new_tokens: int) -> ModelCaptions:
    """One captioner per process and settings."""
    return ModelCaptions(model, prompt, max_new_tokens)


def clip_caption(video: Path, clip_number: int, frames: np.ndarray,
                 analysis: AnalysisConfig) -> tuple[Optional[str], dict]:
    """The clip's caption and captioner record: its sidecar, else the configured model on the middle of
    `frames` (t, h, w, 3) uint8, else none."""
    caption, record = sidecar_caption(video, clip_number)
    if caption is not None or analysis.captioner is None:
        return caption, record
    captioner = load_captioner(analysis.captioner, analysis.caption_prompt, analysis.caption_tokens)
    return captioner.caption(frames[len(frames) // 2]) or None, captioner.record
