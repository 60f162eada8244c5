"""Personalized video at sampling time: `generate --reference-image` end to end on CPU (a tiny random PT2V export, a
tiny random CLIP vision tower, toy text encoders and TAE, frames of the bundled clips as references)."""

import json

import numpy as np
import pytest

from tests.harness import run_distributed
from tests.inference.jobs import personalize_cli_job, read_frames, written

STEM = "0000-a-short-video-clip-seed0"  # + "-<hash of the sidecar>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("personalize")
    return root, run_distributed(personalize_cli_job, world_size=1, args=(str(root),))[0]


def test_the_reference_image_decides_the_video_and_the_sidecar_names_it(runs):
    root, _ = runs
    a, b, other, none = (read_frames(written(root / name, STEM)) for name in ("a", "b", "other", "none"))
    assert a.shape == (16, 64, 64, 3)
    assert np.array_equal(a, b)  # one reference, one seed: one video
    for changed in (other, none):  # another subject's frame, or no reference at all, with the same seed and prompt
        assert np.abs(a.astype(int) - changed.astype(int)).mean() > 1.0
    sidecar = json.loads(written(root / "a", STEM, ".json").read_text())
    assert sidecar["reference_image"].endswith("carphone_pristine.mp4@0.5s")
    assert "reference_image" not in json.loads(written(root / "none", STEM, ".json").read_text())


def test_a_trainable_tower_in_the_export_reads_the_reference_images_pixels(runs):
    root, _ = runs
    phone, rabbit, none = (read_frames(written(root / name, STEM)) for name in
                           ("trainable_phone", "trainable_rabbit", "trainable_none"))
    assert phone.shape == (16, 64, 64, 3)
    assert np.abs(phone.astype(int) - rabbit.astype(int)).mean() > 1.0
    assert np.abs(phone.astype(int) - none.astype(int)).mean() > 1.0


@pytest.mark.parametrize("case, message", [
    ("t2v_export", "is not a personalized export"),
    ("missing", "missing.png is not a file"),
    ("corrupt", "corrupt.png could not be decoded"),
    ("past_the_end", "reference_time 9.0 s is past the end"),
    ("no_tower", "no_tower': no such folder"),
])
def test_bad_reference_inputs_exit_2_with_one_line_and_write_nothing(runs, case, message):
    root, result = runs
    status, stderr = result["refused"][case]
    assert status == 2 and stderr.startswith("generate: error: ") and stderr.count("\n") == 1, stderr
    assert message in stderr
    assert not (root / f"refused_{case}").exists() or not any((root / f"refused_{case}").iterdir())
