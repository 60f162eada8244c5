"""Video and image decoding: probe a file, sample a clip at a frame rate, resize + center-crop to a bucket.

One interface (`Decoder`), three backends:
- `PyAVDecoder`: every codec FFmpeg knows, on CPU. Resizes during the YUV->RGB conversion (swscale).
- `DaliDecoder(device="gpu")`: NVDEC through NVIDIA DALI (h264/hevc/av1/vp9); `device="cpu"`: DALI's
  FFmpeg CPU path (VP9/AV1 and the rest). DALI is imported only when this backend is built.

Images (jpg/png/...) are 1-frame videos. A file whose bytes cannot be read (missing, no permission, an I/O
error from the file system) raises `MediaReadError`, an `OSError` that may pass on a retry; a file that was
read but is not media we can decode raises `DecodeError`. Both messages start with the file's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol

import av
import numpy as np
import torch

from megatron_moviegen.runtime import cuda_available, local_rank_from_env
from megatron_moviegen.utils.frames import cover_size, crop_offsets, resize_center_crop

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class DecodeError(RuntimeError):
    """A media file could not be probed or decoded; the message starts with the file's path."""


class MediaReadError(OSError):
    """A media file's bytes could not be read (missing, permission, EIO); the message starts with the path."""


class DecoderUnavailable(RuntimeError):
    """A decoder backend's library (e.g. DALI) or device is not present."""


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class MediaInfo:
    """What bucketing needs to know about a file, read from its header."""

    width: int
    height: int
    fps: float  # native frame rate; 0.0 for an image
    duration_s: float  # 0.0 for an image
    is_image: bool


@dataclass(frozen=True)
class ClipRequest:
    """Which frames to take and the size to return them at: `num_frames` at `fps` from `start_s`."""

    start_s: float
    fps: float
    num_frames: int
    height: int
    width: int

    def timestamps(self) -> np.ndarray:
        return self.start_s + np.arange(self.num_frames) / self.fps if self.fps > 0 else np.zeros(self.num_frames)


class Decoder(Protocol):
    name: str

    def probe(self, path: str | Path) -> MediaInfo: ...

    def native_frames(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        """The requested frames at the file's own size: (t, h, w, 3) uint8 RGB."""

    def clip_frames(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        """The requested frames resized to cover and center-cropped: (t, h, w, 3) uint8 RGB."""

    def clip(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        """`clip_frames` as the model wants it: (3, t, h, w) float32 in [-1, 1]."""


def cover_rgb(frame: av.VideoFrame, height: int, width: int) -> np.ndarray:
    """One decoded frame resized (swscale, area) to the smallest size with its aspect ratio that covers
    (height, width): (cover_h, cover_w, 3) uint8. The resize every pre-encoded and TAE-training clip gets."""
    cover_h, cover_w = cover_size(frame.height, frame.width, height, width)
    return frame.to_ndarray(format="rgb24", width=cover_w, height=cover_h, interpolation="AREA")


def to_unit_range(frames: torch.Tensor) -> torch.Tensor:
    """(t, h, w, 3) uint8 -> (3, t, h, w) float32 in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def select_frame_indices(frame_times: np.ndarray, targets: np.ndarray, path: str | Path) -> np.ndarray:
    """For each target time, the index of the last frame shown at or before it (frames hold until the next)."""
    eps = 1e-4
    idx = np.searchsorted(frame_times, targets + eps, side="right") - 1
    if len(frame_times) == 0:
        raise DecodeError(f"{path}: no decodable video frames")
    if len(frame_times) > 1:
        frame_step = float(np.median(np.diff(frame_times)))
        late = targets > frame_times[-1] + 2 * frame_step + eps
        if late.any():
            raise DecodeError(
                f"{path}: clip needs frames up to {targets[-1]:.3f}s but the video ends at "
                f"{frame_times[-1] + frame_step:.3f}s"
            )
    return np.clip(idx, 0, len(frame_times) - 1)


def open_media(path: str | Path) -> av.container.InputContainer:
    """`av.open(path)`: a file that cannot be read raises MediaReadError, one that is not media DecodeError."""
    try:
        return av.open(str(path))
    except OSError as exc:  # PyAV's FileNotFoundError, PermissionError, OSError(EIO) are OSErrors too
        raise MediaReadError(f"{path}: cannot read ({exc})") from exc
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise DecodeError(f"{path}: cannot open ({exc})") from exc


class PyAVDecoder:
    """FFmpeg through PyAV on CPU. `seek=True` jumps to the keyframe before the clip; `False` decodes from 0."""

    name = "pyav"

    def __init__(self, seek: bool = True, threads: int = 0):
        self.seek = seek
        self.threads = threads

    def probe(self, path: str | Path) -> MediaInfo:
        with self._open(path) as container:
            stream = container.streams.video[0]
            if is_image(path):
                return MediaInfo(stream.width, stream.height, 0.0, 0.0, True)
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise DecodeError(f"{path}: video stream has no frame rate")
            if stream.duration is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                raise DecodeError(f"{path}: video stream has no duration")
            return MediaInfo(stream.width, stream.height, float(rate), duration, False)

    def native_frames(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        return self._decode(path, request, size=None)

    def clip_frames(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        return self._decode(path, request, size=(request.height, request.width))

    def clip(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        return to_unit_range(self.clip_frames(path, request))

    def decoded_frames(self, path: str | Path) -> Iterator[av.VideoFrame]:
        """Every frame of the file in order, without conversion (the decode-only ceiling)."""
        with self._open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield from self._checked(container.decode(stream), path)

    def frame_times(self, path: str | Path) -> np.ndarray:
        """Presentation times (s) of every frame in display order, from the packets alone (no decoding)."""
        with self._open(path) as container:
            stream = container.streams.video[0]
            try:
                pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
            except OSError as exc:
                raise MediaReadError(f"{path}: read failed while demuxing ({exc})") from exc
            except av.FFmpegError as exc:
                raise DecodeError(f"{path}: demuxing failed ({exc})") from exc
            return np.sort(np.array(pts, dtype=np.float64)) * float(stream.time_base)

    def _open(self, path: str | Path) -> av.container.InputContainer:
        container = open_media(path)
        if not container.streams.video:
            container.close()
            raise DecodeError(f"{path}: has no video stream")
        return container

    @staticmethod
    def _checked(frames: Iterator[av.VideoFrame], path: str | Path) -> Iterator[av.VideoFrame]:
        try:
            yield from frames
        except OSError as exc:
            raise MediaReadError(f"{path}: read failed while decoding ({exc})") from exc
        except av.FFmpegError as exc:
            raise DecodeError(f"{path}: decoding failed ({exc})") from exc

    def _decode(self, path: str | Path, request: ClipRequest, size: tuple[int, int] | None) -> torch.Tensor:
        targets = request.timestamps()
        with self._open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = self.threads
            if self.seek and request.start_s > 0:
                container.seek(int(request.start_s / stream.time_base), stream=stream, backward=True)
            picked = self._pick_frames(container.decode(stream), targets, path)
            return self._convert(picked, size, path)

    def _pick_frames(self, frames: Iterator[av.VideoFrame], targets: np.ndarray, path) -> list[av.VideoFrame]:
        """Decode forward, keeping only the frames some target time lands on."""
        eps = 1e-4
        picked: list[av.VideoFrame] = []
        prev = None
        j = 0
        for frame in self._checked(frames, path):
            t = frame.time if frame.time is not None else 0.0
            while j < len(targets) and t > targets[j] + eps:
                picked.append(prev if prev is not None else frame)
                j += 1
            if j == len(targets):
                break
            prev = frame
        if prev is None:
            raise DecodeError(f"{path}: no decodable video frames")
        if len(targets) - j > 2:
            raise DecodeError(
                f"{path}: clip needs frames up to {targets[-1]:.3f}s but the video ends at {prev.time:.3f}s"
            )
        picked.extend([prev] * (len(targets) - j))
        return picked

    @staticmethod
    def _convert(frames: list[av.VideoFrame], size: tuple[int, int] | None, path) -> torch.Tensor:
        """Frames -> (t, h, w, 3) uint8; with `size`, swscale resizes to cover it and we center-crop."""
        arrays: dict[int, np.ndarray] = {}
        out = []
        for frame in frames:
            if id(frame) not in arrays:
                if size is None:
                    arrays[id(frame)] = frame.to_ndarray(format="rgb24")
                else:
                    rgb = cover_rgb(frame, *size)
                    top, left = crop_offsets(rgb.shape[0], rgb.shape[1], *size)
                    arrays[id(frame)] = rgb[top : top + size[0], left : left + size[1]]
            out.append(arrays[id(frame)])
        if not out:
            raise DecodeError(f"{path}: no frames requested")
        return torch.from_numpy(np.stack(out))  # (t, h, w, 3)


class DaliDecoder:
    """NVIDIA DALI's video decoder on one in-memory file: `device="gpu"` (NVDEC, mixed backend) or "cpu".

    DALI decodes the whole file; we pick the clip's frames by their packet timestamps (read by PyAV without
    decoding, so both backends pick the same frames) and resize + crop with torch on the same device.
    `device_id`: the GPU; None: this node-local rank's (LOCAL_RANK / SLURM_LOCALID), not every rank's cuda:0.
    """

    def __init__(self, device: str = "gpu", device_id: Optional[int] = None, num_threads: int = 2):
        if device not in ("gpu", "cpu"):
            raise ValueError(f"DaliDecoder device: got {device!r}, expected 'gpu' or 'cpu'")
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as exc:
            raise DecoderUnavailable("NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)") from exc
        if device == "gpu" and not cuda_available():
            raise DecoderUnavailable("DaliDecoder(device='gpu') needs a CUDA device")
        self.name = f"dali-{device}"
        self.device = device
        device_id = local_rank_from_env() if device_id is None else device_id
        self.torch_device = torch.device("cuda", device_id) if device == "gpu" else torch.device("cpu")
        self._probe = PyAVDecoder()

        @pipeline_def(batch_size=1, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def video_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, device="cpu")
            return fn.experimental.decoders.video(encoded, device="mixed" if device == "gpu" else "cpu")

        self._pipe = video_pipeline()
        self._pipe.build()

    def probe(self, path: str | Path) -> MediaInfo:
        return self._probe.probe(path)

    def native_frames(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        video = self._decode_all(path)  # (f, h, w, 3) uint8 on self.torch_device
        frame_times = self._probe.frame_times(path)[: video.shape[0]]
        idx = select_frame_indices(frame_times, request.timestamps(), path)
        return video[torch.from_numpy(idx).to(video.device)]

    def clip_frames(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        return resize_center_crop(self.native_frames(path, request), request.height, request.width)

    def clip(self, path: str | Path, request: ClipRequest) -> torch.Tensor:
        return to_unit_range(self.clip_frames(path, request))

    def _decode_all(self, path: str | Path) -> torch.Tensor:
        try:
            encoded = np.fromfile(str(path), dtype=np.uint8)
        except OSError as exc:
            raise MediaReadError(f"{path}: cannot read ({exc})") from exc
        try:
            self._pipe.feed_input("encoded", [encoded])
            (video,) = self._pipe.run()
        except RuntimeError as exc:
            raise DecodeError(f"{path}: DALI could not decode ({exc})") from exc
        if self.device == "cpu":
            return torch.from_numpy(np.array(video[0]))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(video[0].shape(), dtype=torch.uint8, device=self.torch_device)
        feed_ndarray(video[0], out, cuda_stream=torch.cuda.current_stream(self.torch_device))
        return out


def build_decoder(name: str, device_id: Optional[int] = None) -> Decoder:
    """`pyav`, `dali-gpu` or `dali-cpu`; DALI backends raise DecoderUnavailable when DALI is missing. `device_id`:
    dali-gpu's GPU (None: this node-local rank's)."""
    if name == "pyav":
        return PyAVDecoder()
    if name in ("dali-gpu", "dali-cpu"):
        return DaliDecoder(device=name.split("-")[1], device_id=device_id)
    raise ValueError(f"decoder: got {name!r}, expected one of 'pyav', 'dali-gpu', 'dali-cpu'")
