"""`python -m megatron_moviegen.generate` end to end on CPU: a tiny random export, tiny text encoders, the tiny
(untrained) TAE; the files must decode to what was asked for, and a seed must fix the result."""

import json
import runpy
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from megatron_moviegen.generate import main, parse_args, sampling_config
from tests.harness import run_distributed
from tests.inference.jobs import PROMPT, SAMPLING, cli_job

ROOT = Path(__file__).resolve().parent.parent
STEM = "0000-a-red-ball-bouncing-on-a-sign-that-says-hi"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    result = run_distributed(cli_job, world_size=1, args=(str(root),))[0]
    return root, result["errors"]


def _decode(path: Path) -> tuple[np.ndarray, Fraction, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, stream.average_rate, stream.codec_context.name


def test_video_decodes_to_requested_frames_size_and_fps(runs):
    root, _ = runs
    frames, fps, codec = _decode(root / "a" / f"{STEM}.mp4")
    assert frames.shape == (SAMPLING["num_frames"], SAMPLING["height"], SAMPLING["width"], 3)
    assert fps == SAMPLING["fps"] and codec == "h264"
    assert frames.std() > 5.0  # a decoded video, not a constant frame
    assert sorted(p.name for p in (root / "a").iterdir()) == [f"{STEM}.json", f"{STEM}.mp4"]  # no temporaries


def test_sidecar_records_prompt_seed_and_settings(runs):
    root, _ = runs
    sidecar = json.loads((root / "a" / f"{STEM}.json").read_text())
    assert sidecar == {
        "file": f"{STEM}.mp4", "prompt": PROMPT, "text_prompt": f"FPS-8 {PROMPT}", "negative_prompt": None,
        "seed": 3, "steps": 4, "schedule": "linear_quadratic", "guidance_scale": 7.5, "fps": 8, "frames": 16,
        "height": 64, "width": 64, "latent_shape": [16, 2, 8, 8], "checkpoint": str(root / "export"),
        "tae": "toy-tae", "text_encoders": "toy",
    }


def test_same_seed_gives_identical_frames_and_another_seed_does_not(runs):
    root, _ = runs
    first, _, _ = _decode(root / "a" / f"{STEM}.mp4")
    again, _, _ = _decode(root / "b" / f"{STEM}.mp4")
    other, _, _ = _decode(root / "c" / f"{STEM}.mp4")  # seed 4
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


def test_prompts_file_gives_one_video_per_prompt_with_consecutive_seeds(runs):
    root, _ = runs
    names = sorted(p.name for p in (root / "c").glob("*.mp4"))
    assert names == [f"{STEM}.mp4", "0001-the-sea-at-night.mp4"]
    seeds = [json.loads((root / "c" / n).with_suffix(".json").read_text())["seed"] for n in names]
    assert seeds == [4, 5]
    first, _, _ = _decode(root / "c" / names[0])
    second, _, _ = _decode(root / "c" / names[1])
    assert not np.array_equal(first, second)


def test_same_seed_gives_every_prompt_the_seed_given(runs):
    root, _ = runs
    names = sorted(p.name for p in (root / "same_seed").glob("*.mp4"))
    seeds = [json.loads((root / "same_seed" / n).with_suffix(".json").read_text())["seed"] for n in names]
    assert seeds == [4, 4]
    first, _, _ = _decode(root / "same_seed" / names[0])
    assert np.array_equal(first, _decode(root / "c" / names[0])[0])  # prompt 0 at seed 4 either way
    second, _, _ = _decode(root / "same_seed" / names[1])
    assert not np.array_equal(second, _decode(root / "c" / names[1])[0])  # seed 4 here, 5 there


def test_one_frame_is_written_as_png(runs):
    root, _ = runs
    image = np.asarray(Image.open(root / "image" / f"{STEM}.png"))
    assert image.shape == (64, 64, 3) and image.std() > 5.0
    sidecar = json.loads((root / "image" / f"{STEM}.json").read_text())
    assert sidecar["frames"] == 1 and sidecar["latent_shape"] == [16, 1, 8, 8]
    assert not list((root / "image").glob("*.mp4"))


def test_sizes_the_position_tables_cannot_hold_are_refused(runs):
    _, errors = runs
    assert "72 frames at 64x64 px give a token grid (t, h, w) = (9, 4, 4)" in errors["too_long"]
    assert "up to 64 frames and 256x256 px" in errors["too_long"]
    assert "(2, 32, 4)" in errors["too_large"] and "at most (8, 16, 16)" in errors["too_large"]
    assert "got 72 x 64, both must be multiples of 16" in errors["bad_size"]


def test_missing_checkpoint_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*nowhere.* does not exist"):
        main(["--checkpoint", str(missing), "--tae", "toy-tae", "--text-encoders", "toy", "--prompt", "x"])
    missing.mkdir()
    (missing / "config.yaml").write_text("name: x\n")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        main(["--checkpoint", str(missing), "--tae", "toy-tae", "--text-encoders", "toy", "--prompt", "x"])


@pytest.mark.parametrize("run", [lambda: runpy.run_module("megatron_moviegen.generate", run_name="__main__"),
                                 lambda: runpy.run_path(str(ROOT / "tools" / "generate.py"), run_name="__main__")],
                         ids=["python -m megatron_moviegen.generate", "tools/generate.py"])
@pytest.mark.filterwarnings("ignore:'megatron_moviegen.generate' found in sys.modules:RuntimeWarning")
def test_entry_points_parse_the_command_line(run, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["generate", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--guidance-scale" in out and "--prompts-file" in out and "--text-encoders" in out


def test_duration_and_aspect_ratio_bucket_set_frames_and_size():
    args = parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--duration", "2.5", "--fps", "24",
                       "--aspect-ratio", "16:9", "--resolution", "256"])
    cfg = sampling_config(args, size_multiple=16)
    assert (cfg.num_frames, cfg.height, cfg.width, cfg.fps) == (60, 192, 336, 24)
    defaults = sampling_config(parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p"]), 16)
    assert (defaults.num_frames, defaults.height, defaults.width, defaults.steps, defaults.guidance_scale) == \
        (256, 768, 768, 50, 7.5)


def test_fps_defaults_to_a_trained_rate_and_warns_on_an_unseen_one():
    args = parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--duration", "2"])
    assert sampling_config(args, 16, trained_fps=(25, 30)).fps == 25  # 16 never trained: the lowest trained
    assert sampling_config(args, 16, trained_fps=(16, 24)).fps == 16
    assert sampling_config(args, 16).fps == 16  # an export that records nothing
    assert sampling_config(args, 16, trained_fps=(25,)).num_frames == 50
    unseen = parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--fps", "16"])
    with pytest.warns(UserWarning, match=r"--fps 16: the model was trained on FPS-n prompts with n in \[25\] only"):
        assert sampling_config(unseen, 16, trained_fps=(25,)).fps == 16
