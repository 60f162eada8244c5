"""The camera-motion caption prefix (the paper prefixes captions with a camera-motion class), from a clip's
global flow (`motion.Motion`): static, pan left/right, tilt up/down, zoom in/out or handheld.

Directions are the camera's: content moving left in the frame means the camera pans right; content moving down
means it tilts up; content growing means it zooms in.
"""

from __future__ import annotations

from megatron_moviegen.curation.config import CameraConfig
from megatron_moviegen.curation.motion import Motion

PREFIXES = {
    "static": "Static camera.",
    "pan_left": "The camera pans left.",
    "pan_right": "The camera pans right.",
    "tilt_up": "The camera tilts up.",
    "tilt_down": "The camera tilts down.",
    "zoom_in": "The camera zooms in.",
    "zoom_out": "The camera zooms out.",
    "handheld": "Handheld camera.",
}


def camera_motion(motion: Motion, config: CameraConfig) -> str:
    """The clip's camera-motion class (a key of PREFIXES): handheld above the jitter limit, else the strongest of
    pan, tilt and zoom, or static when none reaches `config.static_speed`."""
    if motion.jitter > config.handheld_jitter:
        return "handheld"
    moves = {
        ("pan_right" if motion.pan < 0 else "pan_left"): abs(motion.pan),
        ("tilt_up" if motion.tilt > 0 else "tilt_down"): abs(motion.tilt),
        ("zoom_in" if motion.zoom > 0 else "zoom_out"): abs(motion.zoom) / 2,  # edges move zoom / 2 widths
    }
    label, speed = max(moves.items(), key=lambda item: item[1])
    return label if speed >= config.static_speed else "static"


def with_camera_prefix(caption: str, label: str) -> str:
    """"The camera pans left. <caption>"; the prefix alone when there is no caption."""
    return f"{PREFIXES[label]} {caption}".strip()
