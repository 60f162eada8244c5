"""Writing generated media: H.264 .mp4 for videos, PNG for 1-frame images, JSON sidecars. All atomic. And reading
them back as uint8 frames (for TensorBoard).

Pixels come in as tensors (3, t, h, w) in [-1, 1] (RGB), the layout the TAE decoder produces per sample.
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any, Union

import av
import numpy as np
import torch
from PIL import Image

from megatron_moviegen.utils.io import PathLike, atomic_output

def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(3, t, h, w) in [-1, 1] -> (t, h, w, 3) uint8 RGB; values outside [-1, 1] are clipped."""
    if video.dim() != 4 or video.shape[0] != 3:
        raise ValueError(f"video: got shape {tuple(video.shape)}, expected (3, t, h, w) RGB")
    pixels = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return pixels.permute(1, 2, 3, 0).cpu().numpy()  # (t, h, w, 3)


def write_video(path: PathLike, video: torch.Tensor, fps: Union[int, float, Fraction], crf: int = 18) -> None:
    """Encode (3, t, h, w) in [-1, 1] as H.264 yuv420p at `fps` into the .mp4 `path`.

    yuv420p halves the chroma resolution, so height and width must be even; an odd size raises (no padding,
    so the file always has the size that was generated). crf 18 is visually near-lossless.
    """
    frames = to_uint8_frames(video)
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"video: got height x width {height} x {width}, H.264 yuv420p needs both even")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps: got {fps}, must be > 0")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf: got {crf}, libx264 needs 0 (lossless) to 51")
    with atomic_output(path) as temporary:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush the encoder


def write_image(path: PathLike, image: torch.Tensor) -> None:
    """Write a 1-frame video (3, 1, h, w) in [-1, 1] as an RGB PNG."""
    frames = to_uint8_frames(image)
    if frames.shape[0] != 1:
        raise ValueError(f"image: got {frames.shape[0]} frames, expected 1 (shape (3, 1, h, w))")
    with atomic_output(path) as temporary:
        Image.fromarray(frames[0]).save(temporary, format="PNG")


def write_media(path: PathLike, video: torch.Tensor, fps: Union[int, float, Fraction], crf: int = 18) -> None:
    """(3, t, h, w) in [-1, 1]: one frame as a PNG (`write_image`, fps unused), more as H.264 (`write_video`)."""
    if video.shape[1] == 1:
        write_image(path, video)
    else:
        write_video(path, video, fps=fps, crf=crf)


def read_frames(path: PathLike) -> np.ndarray:
    """A written .mp4 or .png -> its frames (t, h, w, 3) uint8 RGB."""
    if str(path).endswith(".png"):
        return np.asarray(Image.open(path).convert("RGB"))[None]
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(container.streams.video[0])])


def write_json(path: PathLike, data: Any) -> None:
    """Write `data` as indented JSON (e.g. the sidecar with prompt, seed and settings)."""
    text = json.dumps(data, indent=2) + "\n"
    with atomic_output(path) as temporary:
        temporary.write_text(text)
