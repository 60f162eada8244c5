"""Prompt text rules shared by pre-encoding and generation: the FPS prefix and the quoted "visual text".

FPS (SPEC section 1, paper): a video's prompt is prefixed with "FPS-<n>"; an image's is not, in pre-encoding
and in sampling alike (`conditioning_prompt`). `add_fps_prefix` is the one place that writes the prefix; the encoders that read the whole prompt (UL2 and MetaCLIP) therefore see it, while ByT5 sees only
the quoted text, which the prefix never contains.

Quoted text (ByT5's input): the substrings between straight double quotes "..." or curly double quotes
“...”. Single quotes are NOT used: ' and ’ are also apostrophes ("Joe's Diner", “don’t”), so pairing them
would cut words apart. Quotes pair left to right, an unclosed quote opens nothing, and empty quotes
contribute nothing.
"""

from __future__ import annotations

import re

_FPS_PREFIX = re.compile(r"^FPS-\d+\b")
_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')


def add_fps_prefix(prompt: str, fps: int) -> str:
    """"a cat" -> "FPS-16 a cat". Raises if `fps` is not a positive int or the prompt already has a prefix."""
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps: got {fps!r}, expected a positive int")
    if _FPS_PREFIX.match(prompt):
        raise ValueError(f"prompt already starts with an FPS prefix: {prompt[:32]!r}")
    return f"FPS-{fps} {prompt}"


def prompt_fps(fps: float | None) -> int | None:
    """The n of a clip's "FPS-n" prefix: its sampling fps rounded; None for an image (fps None)."""
    return None if fps is None else round(fps)


def conditioning_prompt(caption: str, fps: float | None) -> str:
    """The text the encoders see for a caption: "FPS-<round(fps)> caption" for a video, the caption itself for an
    image (fps None). Pre-encoding and sampling both call this, so a prompt trains and samples the same way."""
    return caption if fps is None else add_fps_prefix(caption, prompt_fps(fps))


def extract_quoted_text(prompt: str) -> list[str]:
    """The non-empty substrings of `prompt` inside "..." or “...”, in order of appearance."""
    return [straight or curly for straight, curly in _QUOTED.findall(prompt) if straight or curly]


def byt5_text(prompt: str) -> str:
    """ByT5's input for one prompt: each quoted substring, re-quoted so their boundaries stay visible,
    joined by spaces ('say "HI" and “BYE”' -> '"HI" "BYE"'); "" when the prompt quotes nothing."""
    return " ".join(f'"{text}"' for text in extract_quoted_text(prompt))
