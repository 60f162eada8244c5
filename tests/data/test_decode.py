import av
import numpy as np
import pytest
import torch

from megatron_moviegen.data.decode import (
    ClipRequest,
    DaliDecoder,
    DecodeError,
    DecoderUnavailable,
    PyAVDecoder,
    build_decoder,
    resize_center_crop,
    select_frame_indices,
)
from megatron_moviegen.utils.quality import psnr
from tests.data.conftest import write_garbage, write_png


def all_frames(path) -> tuple[np.ndarray, torch.Tensor]:
    """Every frame's time and RGB, straight from PyAV: the reference the decoders are checked against."""
    frames = list(PyAVDecoder().decoded_frames(path))
    return np.array([f.time for f in frames]), torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in frames]))


def test_probe_reads_size_fps_duration(clips):
    info = PyAVDecoder().probe(clips / "bigbuckbunny.mp4")
    assert (info.width, info.height, info.fps, info.is_image) == (1280, 720, 25.0, False)
    assert info.duration_s == pytest.approx(5.28)


def test_clip_has_layout_range_and_size(clips):
    pixels = PyAVDecoder().clip(clips / "bigbuckbunny.mp4", ClipRequest(1.0, 16.0, 16, 64, 112))
    assert pixels.shape == (3, 16, 64, 112) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert pixels.std() > 0.1  # real picture content, not a constant
    assert (pixels[:, 0] - pixels[:, -1]).abs().mean() > 0.01  # frames move over 1 s


def test_native_rate_clip_is_consecutive_decoded_frames(clips):
    path = clips / "carphone_pristine.mp4"
    times, reference = all_frames(path)
    fps = PyAVDecoder().probe(path).fps
    got = PyAVDecoder().native_frames(path, ClipRequest(float(times[10]), fps, 20, 0, 0))
    assert torch.equal(got, reference[10:30])


def test_packet_times_are_the_decoded_frame_times(clips):
    path = clips / "bikes.mp4"
    times, _ = all_frames(path)
    np.testing.assert_allclose(PyAVDecoder().frame_times(path), times)


def test_resampled_clip_picks_the_frame_shown_at_each_time(clips):
    path = clips / "carphone_pristine.mp4"  # 29.97 fps sampled at 16 fps: frames are skipped
    times, reference = all_frames(path)
    request = ClipRequest(0.5, 16.0, 40, 0, 0)
    expected = reference[torch.from_numpy(select_frame_indices(times, request.timestamps(), path))]
    assert torch.equal(PyAVDecoder().native_frames(path, request), expected)


def test_seek_decode_matches_full_decode(clips):
    path = clips / "bikes.mp4"
    request = ClipRequest(6.0, 16.0, 32, 96, 224)
    seeked = PyAVDecoder(seek=True).clip(path, request)
    full = PyAVDecoder(seek=False).clip(path, request)
    assert psnr(seeked, full, data_range=2.0) >= 40.0


def test_swscale_and_torch_resizers_agree(clips):
    path = clips / "bigbuckbunny.mp4"
    request = ClipRequest(2.0, 16.0, 8, 96, 160)
    decoder = PyAVDecoder()
    torch_resized = resize_center_crop(decoder.native_frames(path, request), 96, 160)
    assert psnr(torch_resized, decoder.clip_frames(path, request)) >= 30.0


def test_center_crop_keeps_the_middle():
    frames = torch.zeros(1, 10, 40, 3, dtype=torch.uint8)
    frames[:, :, 15:25] = 255  # a white band in the middle third of a wide image
    out = resize_center_crop(frames, 10, 10)  # no resize needed: crop the central 10 columns
    assert out.shape == (1, 10, 10, 3) and int(out.min()) == 255


def test_image_is_one_frame_video(tmp_path):
    path = write_png(tmp_path / "a.png", 60, 80)
    decoder = PyAVDecoder()
    info = decoder.probe(path)
    assert (info.width, info.height, info.is_image, info.fps) == (80, 60, True, 0.0)
    pixels = decoder.clip(path, ClipRequest(0.0, 0.0, 1, 48, 64))
    assert pixels.shape == (3, 1, 48, 64)


def test_corrupt_file_raises_naming_it(tmp_path):
    path = write_garbage(tmp_path / "broken.mp4")
    with pytest.raises(DecodeError, match="broken.mp4"):
        PyAVDecoder().probe(path)


def test_clip_past_the_end_raises(clips):
    with pytest.raises(DecodeError, match="ends at"):
        PyAVDecoder().native_frames(clips / "carphone_pristine.mp4", ClipRequest(3.0, 16.0, 32, 0, 0))


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_dali_available(), reason="checks the message shown when DALI is missing")
def test_dali_backend_reports_missing_dali():
    with pytest.raises(DecoderUnavailable, match="DALI is not installed"):
        build_decoder("dali-cpu")


@pytest.mark.parametrize("env, expected", [({"SLURM_LOCALID": "3"}, 3), ({"LOCAL_RANK": "5", "SLURM_LOCALID": "1"}, 5),
                                           ({}, 0)], ids=["srun", "torchrun", "alone"])
def test_dali_gpu_decodes_on_this_node_local_ranks_gpu(dali_gpu_devices, monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    decoder = build_decoder("dali-gpu")
    assert dali_gpu_devices == [expected]
    assert decoder.torch_device == torch.device("cuda", expected)


def _vp9_transcode(src, dst, num_frames=48):
    """Re-encode the first frames of `src` as VP9 in WebM (near-lossless) for DALI's CPU path."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream_in = inp.streams.video[0]
        stream = out.add_stream("libvpx-vp9", rate=stream_in.average_rate)
        stream.width, stream.height, stream.pix_fmt = stream_in.width, stream_in.height, "yuv420p"
        stream.options = {"crf": "10", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
        for i, frame in enumerate(inp.decode(stream_in)):
            if i == num_frames:
                break
            out.mux(stream.encode(frame.reformat(format="yuv420p")))
        out.mux(stream.encode(None))
    return dst


@pytest.mark.skipif(not _dali_available(), reason="NVIDIA DALI is not installed")
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_dali_matches_pyav(clips, tmp_path, device):
    if device == "gpu" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path = clips / "carphone_pristine.mp4" if device == "gpu" else _vp9_transcode(
        clips / "carphone_pristine.mp4", tmp_path / "carphone.webm")
    request = ClipRequest(0.25, 16.0, 16, 0, 0)
    dali = DaliDecoder(device=device).native_frames(path, request)
    assert psnr(dali.cpu(), PyAVDecoder().native_frames(path, request)) >= 40.0


@pytest.mark.parametrize("fps", [16.0, 24.0])
def test_a_clip_sampled_at_a_fixed_rate_has_duration_times_fps_frames(clips, fps):
    """bikes.mp4 (25 fps, 10 s) through bucketing and decoding at the SFT rates: 10 s -> 160 / 240 frames."""
    from megatron_moviegen.data.buckets import BucketTable
    from megatron_moviegen.data.config import BucketConfig
    from megatron_moviegen.data.manifest import ManifestEntry
    from megatron_moviegen.data.preencode import prepare_entry

    path = clips / "bikes.mp4"
    duration = PyAVDecoder().probe(path).duration_s
    table = BucketTable(BucketConfig(resolution=64, aspect_ratios=["16:9"], durations_s=[duration], frame_rate=fps,
                                     sample_fps=[fps], include_images=False))
    prepared = prepare_entry(0, ManifestEntry(str(path), "bikes"), table, PyAVDecoder())
    assert prepared.fps == fps
    assert prepared.frames.shape[0] == round(duration * fps) == {16.0: 160, 24.0: 240}[fps]
    times, _ = all_frames(path)
    native = PyAVDecoder().native_frames(path, ClipRequest(0.0, fps, prepared.frames.shape[0], 0, 0))
    expected = torch.from_numpy(select_frame_indices(times, np.arange(len(native)) / fps, path))
    assert len(set(expected.tolist())) == len(native)  # 25 -> 16 or 24 fps: every picked frame is distinct
    assert expected[-1] == int((len(native) - 1) / fps * 25 + 1e-6)  # the last frame is the one at 9.9x s
