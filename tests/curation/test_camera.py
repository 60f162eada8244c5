"""Camera-motion classes from global flow, on pans, tilts and zooms made by moving a crop over a real frame."""

import cv2
import numpy as np
import pytest

from megatron_moviegen.curation.camera import camera_motion, with_camera_prefix
from megatron_moviegen.curation.config import CameraConfig
from megatron_moviegen.curation.motion import clip_motion
from megatron_moviegen.curation.synthetic import bundled_frames

STEPS = np.linspace(0.0, 1.0, 9)  # 9 samples at 4 fps: 2 s
# crop boxes (top, left, height, width) over a 288x512 still, per step a; the camera moves the opposite way
MOVES = {
    "pan_right": lambda a: (72, 40 + 200 * a, 144, 256),
    "pan_left": lambda a: (72, 240 - 200 * a, 144, 256),
    "tilt_down": lambda a: (10 + 120 * a, 128, 144, 256),
    "tilt_up": lambda a: (130 - 120 * a, 128, 144, 256),
    "zoom_in": lambda a: (72 + 36 * a, 128 + 64 * a, 144 * (1 - 0.5 * a), 256 * (1 - 0.5 * a)),
    "zoom_out": lambda a: (108 - 36 * a, 192 - 64 * a, 72 * (1 + a), 128 * (1 + a)),
    "static": lambda a: (72, 128, 144, 256),
}


@pytest.fixture(scope="module")
def still():
    return bundled_frames("bigbuckbunny.mp4", 1, 288, 512)[0]


def crops(still: np.ndarray, box) -> np.ndarray:
    out = []
    for a in STEPS:
        top, left, h, w = (int(v) for v in box(a))
        out.append(cv2.resize(still[top:top + h, left:left + w], (256, 144), interpolation=cv2.INTER_AREA))
    return np.stack(out)


@pytest.mark.parametrize("label", sorted(MOVES))
def test_camera_motion_of_a_moving_crop(still, label):
    motion = clip_motion(crops(still, MOVES[label]), STEPS * 2.0, flow_width=128)
    assert camera_motion(motion, CameraConfig()) == label, motion


def test_random_crops_are_handheld(still):
    from megatron_moviegen.curation.synthetic import shaky

    frames = shaky(np.repeat(crops(still, MOVES["static"])[:1], 9, axis=0))
    assert camera_motion(clip_motion(frames, STEPS * 2.0, 128), CameraConfig()) == "handheld"


def test_prefix_starts_the_caption():
    assert with_camera_prefix("a rabbit", "zoom_in") == "The camera zooms in. a rabbit"
