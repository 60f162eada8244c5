"""Writing generated audio: 16-bit PCM .wav, and an .mp4 whose video stream is copied from a source video (no
re-encoding) beside the audio encoded as AAC. All atomic.

Waveforms come in as tensors (channels, n) in [-1, 1], the layout the audio autoencoder's decoder produces per
sample.
"""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import torch

from megatron_moviegen.utils.io import PathLike, atomic_output

LAYOUTS = {1: "mono", 2: "stereo"}  # channels -> FFmpeg layout name (decoding in data/audio.py too)


def _checked(waveform: torch.Tensor) -> np.ndarray:
    if waveform.dim() != 2 or waveform.shape[0] not in LAYOUTS:
        raise ValueError(f"waveform: got shape {tuple(waveform.shape)}, expected (1 or 2 channels, n)")
    return waveform.detach().float().clamp(-1.0, 1.0).cpu().numpy()


def write_wav(path: PathLike, waveform: torch.Tensor, sample_rate: int) -> None:
    """(channels, n) in [-1, 1] -> a 16-bit PCM .wav at `sample_rate`."""
    samples = np.round(_checked(waveform) * 32767).astype("<i2")  # (channels, n)
    with atomic_output(path) as temporary:
        with wave.open(str(temporary), "wb") as out:
            out.setnchannels(samples.shape[0])
            out.setsampwidth(2)
            out.setframerate(sample_rate)
            out.writeframes(samples.T.tobytes())  # interleaved


def mux_audio(video: PathLike, waveform: torch.Tensor, sample_rate: int, path: PathLike, bitrate: int = 192_000
              ) -> None:
    """`video`'s video stream, copied packet for packet, and (channels, n) in [-1, 1] encoded as AAC at `sample_rate`,
    into the .mp4 `path`. Any audio stream of `video` is left out."""
    samples = _checked(waveform)
    with atomic_output(path) as temporary:
        with av.open(str(video)) as source, av.open(str(temporary), mode="w", format="mp4") as out:
            if not source.streams.video:
                raise ValueError(f"{video}: has no video stream to put the audio beside")
            video_in = source.streams.video[0]
            video_out = out.add_stream_from_template(video_in)
            audio_out = out.add_stream("aac", rate=sample_rate, layout=LAYOUTS[samples.shape[0]])
            audio_out.bit_rate = bitrate
            for packet in source.demux(video_in):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                packet.stream = video_out
                out.mux(packet)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp",
                                               layout=LAYOUTS[samples.shape[0]])
            frame.sample_rate, frame.pts = sample_rate, 0
            out.mux(audio_out.encode(frame))
            out.mux(audio_out.encode(None))  # flush the encoder


def read_wav(path: PathLike) -> tuple[torch.Tensor, int]:
    """A 16-bit PCM .wav -> ((channels, n) float32 in [-1, 1], sample rate)."""
    with wave.open(str(Path(path)), "rb") as source:
        if source.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * source.getsampwidth()}-bit samples, expected 16-bit PCM")
        data = np.frombuffer(source.readframes(source.getnframes()), dtype="<i2")
        channels, rate = source.getnchannels(), source.getframerate()
    return torch.from_numpy(data.reshape(-1, channels).T.astype(np.float32) / 32767), rate
