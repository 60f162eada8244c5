"""A face crop for personalization's reference images, offline: `data.reference.crop:
"megatron_moviegen.data.face_crop:crop_face"` (needs `pip install -e ".[face]"`, OpenCV).

OpenCV's frontal-face Haar cascade (its weights ship inside opencv-python-headless) finds the largest face; the
reference becomes a square around it (the face box widened by MARGIN on every side) in which everything outside the
ellipse inscribed in the face box is grey, as the paper masks all but the face so the model cannot copy clothes or
background from the reference. A frame without a face raises DecodeError, which pre-encoding records as that entry's
"decode" reject. Any better detector plugs into the same hook (a function (h, w, 3) uint8 -> (h', w', 3) uint8).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from megatron_moviegen.data.decode import DecodeError

MARGIN = 0.25  # of the face box's side, added on each side of the crop
MIN_NEIGHBOURS = 8  # the cascade's vote threshold: 8 finds the bundled car-phone face, nothing in the rabbit clip
MIN_FACE = 24  # pixels
GREY = 128


@lru_cache(maxsize=1)
def _cascade():
    try:
        import cv2
    except ImportError:
        raise ImportError("data.reference.crop face_crop:crop_face needs OpenCV: pip install -e \".[face]\" "
                          "(opencv-python-headless<5: OpenCV 5 no longer ships the Haar cascades)") from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise ImportError(f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved it out); install "
                          "opencv-python-headless<5")
    return cv2, cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def find_face(frame: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, side, side) of the largest frontal face in an (h, w, 3) uint8 RGB frame, or None."""
    cv2, cascade = _cascade()
    grey = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    faces = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=MIN_NEIGHBOURS, minSize=(MIN_FACE, MIN_FACE))
    if len(faces) == 0:
        return None
    x, y, w, h = max(faces, key=lambda box: box[2] * box[3])
    return int(x), int(y), int(w), int(h)


def crop_face(frame: torch.Tensor) -> torch.Tensor:
    """(h, w, 3) uint8 -> the face: a square crop around the largest face, grey outside the face's ellipse."""
    image = frame.cpu().numpy()
    box = find_face(image)
    if box is None:
        raise DecodeError(f"no face found in the reference frame ({image.shape[0]}x{image.shape[1]}) by OpenCV's "
                          "frontal-face cascade; give a reference with a visible frontal face")
    x, y, w, h = box
    cx, cy, half = x + w / 2, y + h / 2, (1 + 2 * MARGIN) * max(w, h) / 2
    top, left = int(round(cy - half)), int(round(cx - half))
    side = int(round(2 * half))
    out = np.full((side, side, 3), GREY, dtype=np.uint8)  # the crop, grey where it leaves the frame
    rows = slice(max(top, 0), min(top + side, image.shape[0]))
    cols = slice(max(left, 0), min(left + side, image.shape[1]))
    out[rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = image[rows, cols]
    yy, xx = np.mgrid[0:side, 0:side] + 0.5
    inside = ((xx - (cx - left)) / (w / 2)) ** 2 + ((yy - (cy - top)) / (h / 2)) ** 2 <= 1.0
    out[~inside] = GREY
    return torch.from_numpy(out)
