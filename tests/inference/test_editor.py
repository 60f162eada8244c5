"""Video editing at sampling time: `generate --edit-video` end to end on CPU (a tiny random edit export, toy text
encoders and TAE, a real bundled clip as the source), and the editor's refusals and guidance."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_moviegen.checkpoints.export import read_exported_config
from megatron_moviegen.generate import parse_args
from tests.harness import run_distributed
from tests.inference.jobs import EDIT_SOURCE, INSTRUCTION, edit_cli_job, read_frames, written

STEM = "0000-make-it-black-and-white-seed0"  # + "-<hash of the sidecar>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    return root, run_distributed(edit_cli_job, world_size=1, args=(str(root),))[0]


def test_an_edit_has_the_sources_frames_and_size_and_a_sidecar_naming_source_task_and_guidance(runs):
    root, _ = runs
    frames = read_frames(written(root / "a", STEM))
    assert frames.shape == (EDIT_SOURCE["frames"], EDIT_SOURCE["height"], EDIT_SOURCE["width"], 3)
    sidecar = json.loads(written(root / "a", STEM, ".json").read_text())
    assert sidecar["edit_source"].endswith("carphone_pristine.mp4") and sidecar["instruction"] == INSTRUCTION
    assert sidecar["text_prompt"] == f"FPS-8 {INSTRUCTION}" and sidecar["task"] == "video_edit"
    assert (sidecar["guidance_scale"], sidecar["source_guidance_scale"], sidecar["steps"]) == (7.5, 1.5, 3)


def test_the_exports_record_their_kind(runs):
    root, _ = runs
    assert [read_exported_config(root / name).kind for name in ("edit_export", "t2v_export")] == ["edit", "t2v"]


def test_the_same_seed_gives_the_same_edit_and_another_task_another_edit(runs):
    root, _ = runs
    a, b = read_frames(written(root / "a", STEM)), read_frames(written(root / "b", STEM))
    assert np.array_equal(a, b)
    other_task = read_frames(written(root / "image_task", STEM))
    assert np.abs(other_task.astype(int) - a).mean() > 1.0  # the task embedding is read
    assert json.loads(written(root / "image_task", STEM, ".json").read_text())["task"] == "image_edit"


def test_an_edit_in_bf16_is_the_float32_edit_to_within_rounding(runs):
    root, _ = runs
    a, bf16 = read_frames(written(root / "a", STEM)), read_frames(written(root / "bf16", STEM))
    assert bf16.shape == a.shape
    assert np.abs(bf16.astype(int) - a).mean() < 2.0  # 8-bit levels; another task moves it by more than 1


def test_an_image_source_is_edited_into_a_png_of_its_size(runs):
    root, _ = runs
    image = Image.open(written(root / "image", STEM, ".png"))
    assert image.size == (EDIT_SOURCE["width"], EDIT_SOURCE["height"])
    assert json.loads(written(root / "image", STEM, ".json").read_text())["text_prompt"] == INSTRUCTION  # no FPS prefix


@pytest.mark.parametrize("case, message", [
    ("t2v_export", "is not a video-editing export"),
    ("unknown_task", "--task: got 'remove_object', the export knows ['image_edit', 'video_edit']"),
    ("corrupt", "corrupt.mp4 could not be decoded"),
    ("missing", "missing.mp4 is not a file"),
    ("odd_size", "height x width: got 72 x 64, both must be multiples of 16"),
])
def test_bad_edit_inputs_exit_2_with_one_line_and_write_nothing(runs, case, message):
    root, result = runs
    status, stderr = result["refused"][case]
    assert status == 2 and stderr.startswith("generate: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert not (root / f"refused_{case}").exists() or not any((root / f"refused_{case}").iterdir())


def test_guidance_over_the_source_changes_the_edit(runs):
    _, result = runs
    plain, guided = result["latents"][1.0], result["latents"][1.5]
    assert plain.shape == guided.shape == (1, 16, 2, 8, 8) and torch.isfinite(guided).all()
    assert (plain - guided).abs().max() > 1e-3


def test_edit_takes_source_pixels_to_the_decoded_edit_of_its_latents(runs):
    _, result = runs
    edited = result["edited"]
    assert edited.shape == (1, 3, EDIT_SOURCE["frames"], EDIT_SOURCE["height"], EDIT_SOURCE["width"])
    assert edited.min() >= -1 and edited.max() <= 1
    assert torch.equal(edited, result["decoded"])  # = TAE decode of sample_latents(source_latents(pixels))


def test_editing_options_without_edit_video_are_refused():
    with pytest.raises(SystemExit):
        parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--task", "video_edit"])
    assert parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--edit-video", "a.mp4"]).frames is None
