"""Audio from media files (PyAV) for Movie Gen Audio (SPEC section 7): a file's audio stream decoded, down- or
upmixed and resampled to the autoencoder's rate; which duration bucket a file fills; random segments for training
the audio autoencoder.

    waveform = read_audio("clip.mp4", sample_rate=48000, channels=1)   # (1, n) float32 in [-1, 1]
    clip = assign_audio(probe_audio("clip.mp4"), 0.0, None, AudioDataConfig(durations_s=[10.0]))
    sampler = AudioSegmentSampler(["clip.mp4"], 48000, 1, max_duration_s=60, seed=0)   # autoencoder training

A file that cannot be read raises MediaReadError (an OSError, retried by pre-encoding); one that was read but has no
usable audio raises DecodeError. Both messages start with the path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import av
import numpy as np
import torch

from megatron_moviegen.data.config import AudioDataConfig
from megatron_moviegen.data.decode import DecodeError, MediaReadError, open_media
from megatron_moviegen.utils.audio_io import LAYOUTS


def read_audio(path: str | Path, sample_rate: int = 48000, channels: int = 1, start_s: float = 0.0,
               duration_s: Optional[float] = None) -> torch.Tensor:
    """The audio of `path` from `start_s` for `duration_s` seconds (default: to the end) -> (channels, n) float32
    in [-1, 1] at `sample_rate` (any source rate and layout, downmixed or upmixed by FFmpeg's resampler)."""
    if channels not in LAYOUTS:
        raise ValueError(f"channels: got {channels}, expected 1 (mono) or 2 (stereo)")
    with open_media(path) as container:
        if not container.streams.audio:
            raise DecodeError(f"{path}: has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", layout=LAYOUTS[channels], rate=sample_rate)
        chunks = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
        except OSError as exc:
            raise MediaReadError(f"{path}: read failed while decoding audio ({exc})") from exc
        except av.FFmpegError as exc:
            raise DecodeError(f"{path}: audio could not be decoded ({exc})") from exc
    if not chunks:
        raise DecodeError(f"{path}: the audio stream holds no samples")
    waveform = torch.from_numpy(np.concatenate(chunks, axis=1))  # (channels, n)
    first = int(round(start_s * sample_rate))
    last = waveform.shape[1] if duration_s is None else first + int(round(duration_s * sample_rate))
    if first >= waveform.shape[1] or last > waveform.shape[1]:
        raise DecodeError(f"{path}: audio needs samples up to {last / sample_rate:.3f}s but ends at "
                          f"{waveform.shape[1] / sample_rate:.3f}s")
    return waveform[:, first:last].clamp(-1.0, 1.0).contiguous()


@dataclass(frozen=True)
class AudioInfo:
    """What bucketing needs to know about a file's audio, from its header."""

    duration_s: float  # the audio stream's
    video_duration_s: Optional[float]  # None: no video stream
    video_fps: float = 0.0


def _stream_duration(stream, container) -> Optional[float]:
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration is not None else None


def probe_audio(path: str | Path) -> AudioInfo:
    with open_media(path) as container:
        if not container.streams.audio:
            raise DecodeError(f"{path}: has no audio stream")
        duration = _stream_duration(container.streams.audio[0], container)
        if duration is None:
            raise DecodeError(f"{path}: audio stream has no duration")
        video = [s for s in container.streams.video if s.frames != 1]  # an mp3's cover art is not a video
        if not video:
            return AudioInfo(duration, None)
        rate = video[0].average_rate or video[0].guessed_rate
        return AudioInfo(duration, _stream_duration(video[0], container), float(rate or 0.0))


@dataclass(frozen=True)
class AudioBucket:
    """Samples of one length: `num_frames` latent frames (one token each)."""

    num_frames: int

    @property
    def name(self) -> str:
        return f"audio{self.num_frames}"

    @property
    def is_image(self) -> bool:
        return False


@dataclass(frozen=True)
class AudioClip:
    """A sample's bucket and where its audio (and video) is taken from."""

    bucket: AudioBucket
    start_s: float
    duration_s: float
    has_video: bool
    video_fps: float


def assign_audio(info: AudioInfo, start_s: float, end_s: Optional[float], config: AudioDataConfig
                 ) -> Union[AudioClip, str]:
    """The longest duration bucket that fits between `start_s` and the end (of the manifest range, the audio and the
    video, whichever comes first), or why none does."""
    ends = {"entry's range": end_s, "audio": info.duration_s, "video": info.video_duration_s}
    which, end = min(((name, end) for name, end in ends.items() if end is not None), key=lambda item: item[1])
    span = end - start_s
    fitting = [d for d in sorted(config.durations_s) if d <= span + 1e-6]
    if not fitting:
        return (f"too short: {span:.2f}s from {start_s:g}s to the end of the {which}; the shortest duration in "
                f"data.audio.durations_s is {min(config.durations_s):g}s")
    duration = fitting[-1]
    return AudioClip(AudioBucket(round(duration * config.latent_rate)), start_s, duration,
                     info.video_duration_s is not None, info.video_fps)


class AudioSegmentSampler:
    """Random fixed-length segments of a list of media files' audio, each file decoded once (at most
    `max_duration_s` seconds of it)."""

    def __init__(self, paths: list[str | Path], sample_rate: int, channels: int, max_duration_s: float, seed: int):
        self.waveforms = []
        for path in paths:
            waveform = read_audio(path, sample_rate, channels)
            self.waveforms.append(waveform[:, : int(max_duration_s * sample_rate)])
        self.rng = random.Random(seed)

    def sample(self, batch_size: int, num_samples: int) -> torch.Tensor:
        """(batch_size, channels, num_samples) in [-1, 1]: a random file and start per item."""
        segments = []
        for _ in range(batch_size):
            waveform = self.rng.choice(self.waveforms)
            if waveform.shape[1] < num_samples:
                raise ValueError(f"an audio track has {waveform.shape[1]} samples, fewer than the segment's "
                                 f"{num_samples}")
            start = self.rng.randrange(waveform.shape[1] - num_samples + 1)
            segments.append(waveform[:, start:start + num_samples])
        return torch.stack(segments)
