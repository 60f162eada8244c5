"""Writing generated media: H.264 .mp4 for videos, PNG for 1-frame images, JSON sidecars. All atomic. And reading
them back as uint8 frames (for TensorBoard).

Pixels come in as tensors (3, t, h, w) in [-1, 1] (RGB), the layout the TAE decoder produces per sample, or, for
videos, as an iterable of such chunks along t (what `decode_chunks` yields), encoded one chunk at a time so the
whole video is never in memory.
"""

from __future__ import annotations

import json
from fractions import Fraction
from itertools import chain
from typing import Any, Iterable, Iterator, Union

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


Video = Union[torch.Tensor, Iterable[torch.Tensor]]  # (3, t, h, w), or chunks (3, t_i, h, w) along t


def video_chunks(video: Video) -> Iterator[torch.Tensor]:
    """A whole video (3, t, h, w) as one chunk, or the chunks of an iterable as they come."""
    return iter([video]) if isinstance(video, torch.Tensor) else iter(video)


def first_chunk(chunks: Iterator[torch.Tensor]) -> torch.Tensor:
    """The next chunk of `chunks`; raises when there is none (a video needs at least one frame)."""
    first = next(chunks, None)
    if first is None:
        raise ValueError("video: got no chunks, need at least one frame")
    return first


def write_video(path: PathLike, video: Video, fps: Union[int, float, Fraction], crf: int = 18) -> None:
    """Encode (3, t, h, w) in [-1, 1], or its chunks along t one at a time, as H.264 yuv420p at `fps` into the
    .mp4 `path`.

    yuv420p halves the chroma resolution, so height and width must be even; an odd size raises (no padding,
    so the file always has the size that was generated). crf 18 is visually near-lossless.
    """
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps: got {fps}, must be > 0")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf: got {crf}, libx264 needs 0 (lossless) to 51")
    chunks = video_chunks(video)
    first = to_uint8_frames(first_chunk(chunks))  # (t, h, w, 3)
    height, width = first.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"video: got height x width {height} x {width}, H.264 yuv420p needs both even")
    with atomic_output(path) as temporary:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frames in chain([first], map(to_uint8_frames, chunks)):
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


def write_media(path: PathLike, video: Video, fps: Union[int, float, Fraction], crf: int = 18) -> None:
    """(3, t, h, w) in [-1, 1], or its chunks along t: one frame as a PNG (`write_image`, fps unused), more as H.264
    (`write_video`, chunk by chunk)."""
    chunks = video_chunks(video)
    first = first_chunk(chunks)
    if first.shape[1] == 1:
        second = next(chunks, None)
        if second is None:
            return write_image(path, first)
        chunks = chain([second], chunks)
    write_video(path, chain([first], chunks), fps=fps, crf=crf)


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
