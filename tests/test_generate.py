"""`python -m megatron_moviegen.generate` end to end on CPU: a tiny random export, tiny text encoders, the tiny
(untrained) TAE; the files must decode to what was asked for, and a seed must fix the result."""

import json
import logging
import runpy
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

import megatron_moviegen.generate as generate_module
from megatron_moviegen.data.buckets import BucketTable
from megatron_moviegen.generate import bucket_multiple, generate, main, parse_args, sampling_config
from megatron_moviegen.inference.pipeline import warn_truncated
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed
from tests.inference.jobs import NAMING_RUNS, PROMPT, SAMPLING, cli_job, written

ROOT = Path(__file__).resolve().parent.parent
WORDS = "0000-a-red-ball-bouncing-on-a-sign-that-says-hi"
STEM = f"{WORDS}-seed3"  # + "-<hash of the sidecar>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    result = run_distributed(cli_job, world_size=1, args=(str(root),))[0]
    return root, result


def _decode(path: Path) -> tuple[np.ndarray, Fraction, str]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, stream.average_rate, stream.codec_context.name


def test_video_decodes_to_requested_frames_size_and_fps(runs):
    root, _ = runs
    video = written(root / "a", STEM)
    frames, fps, codec = _decode(video)
    assert frames.shape == (SAMPLING["num_frames"], SAMPLING["height"], SAMPLING["width"], 3)
    assert fps == SAMPLING["fps"] and codec == "h264"
    assert frames.std() > 5.0  # a decoded video, not a constant frame
    assert sorted(p.name for p in (root / "a").iterdir()) == [f"{video.stem}.json", video.name]  # no temporaries


def test_sidecar_records_prompt_seed_and_settings(runs):
    root, _ = runs
    video = written(root / "a", STEM)
    sidecar = json.loads(video.with_suffix(".json").read_text())
    assert sidecar == {
        "file": video.name, "prompt": PROMPT, "text_prompt": f"FPS-8 {PROMPT}", "negative_prompt": None,
        "seed": 3, "steps": 4, "schedule": "linear_quadratic", "guidance_scale": 7.5, "fps": 8, "frames": 16,
        "height": 64, "width": 64, "latent_shape": [16, 2, 8, 8], "checkpoint": str(root / "export"),
        "tae": "toy-tae", "text_encoders": "toy", "precision": "float32",
    }


def test_same_seed_gives_identical_frames_and_another_seed_does_not(runs):
    root, _ = runs
    first, _, _ = _decode(written(root / "a", STEM))
    again, _, _ = _decode(written(root / "b", STEM))
    other, _, _ = _decode(written(root / "c", f"{WORDS}-seed4"))
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


def test_prompts_file_gives_one_video_per_prompt_with_consecutive_seeds(runs):
    root, _ = runs
    names = [written(root / "c", f"{WORDS}-seed4").name, written(root / "c", "0001-the-sea-at-night-seed5").name]
    assert sorted(p.name for p in (root / "c").glob("*.mp4")) == names
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
    assert names[1] == written(root / "same_seed", "0001-the-sea-at-night-seed4").name  # "c" holds ...-seed5-*
    second, _, _ = _decode(root / "same_seed" / names[1])
    assert not np.array_equal(second, _decode(written(root / "c", "0001-the-sea-at-night-seed5"))[0])


def test_one_frame_is_written_as_png(runs):
    root, _ = runs
    path = written(root / "image", f"{WORDS}-seed0", ".png")
    image = np.asarray(Image.open(path))
    assert image.shape == (64, 64, 3) and image.std() > 5.0
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["frames"] == 1 and sidecar["latent_shape"] == [16, 1, 8, 8]
    assert not list((root / "image").glob("*.mp4"))


def test_sizes_the_position_tables_cannot_hold_are_refused(runs):
    errors = runs[1]["errors"]
    assert "72 frames at 64x64 px give a token grid (t, h, w) = (9, 4, 4)" in errors["too_long"]
    assert "up to 64 frames and 256x256 px" in errors["too_long"]
    assert "(2, 32, 4)" in errors["too_large"] and "at most (8, 16, 16)" in errors["too_large"]
    assert "got 72 x 64, both must be multiples of 16" in errors["bad_size"]


def test_another_seed_writes_beside_the_earlier_video_not_over_it(runs):
    root, _ = runs
    seed3, seed7 = written(root / "b", STEM), written(root / "b", f"{WORDS}-seed7")
    assert len(list((root / "b").iterdir())) == 4  # both videos and both sidecars
    assert json.loads(seed7.with_suffix(".json").read_text())["seed"] == 7
    assert np.array_equal(_decode(seed3)[0], _decode(written(root / "a", STEM))[0])  # not overwritten by seed 7


def test_a_name_is_unique_to_the_exact_prompt_and_settings_and_only_the_same_request_rewrites_it(runs):
    """"cat" and "CAT!!" (the same words), two long prompts whose words share their first 48 characters, and one
    prompt at --steps 2 and 3 once wrote one file each over the other; now each keeps its own, and the same
    request again names the same file."""
    root, result = runs
    named = result["named"]
    assert named[-1] == named[0]  # ("cat", 2) again: the same, deterministic, file
    assert len(set(named)) == len(NAMING_RUNS) - 1, named
    assert named[0].startswith("0000-cat-seed0-") and named[1].startswith("0000-cat-seed0-")
    assert len({name[:60] for name in named[3:5]}) == 1  # the long prompts' names differ in the hash only
    assert sorted(p.name for p in (root / "names").glob("*.png")) == sorted(set(named))
    for name, (prompt, steps) in zip(named, NAMING_RUNS):
        sidecar = json.loads((root / "names" / name).with_suffix(".json").read_text())
        assert (sidecar["file"], sidecar["prompt"], sidecar["steps"]) == (name, prompt, int(steps))


def test_a_model_shape_the_export_does_not_hold_exits_2_with_one_line(runs):
    root, result = runs
    status, stderr = result["mismatch"]
    assert status == 2
    assert stderr.count("\n") == 1 and stderr.startswith("generate: error: ")
    assert "layers.2." in stderr and "Traceback" not in stderr
    assert not (root / "mismatch").exists() or not any((root / "mismatch").iterdir())


BAD_INPUTS = {  # case: (arguments replacing the good ones, words of the one line)
    "empty prompt": (["--prompt", ""], "prompt 0: got '', need some text"),
    "blank prompt": (["--prompt", "   "], "prompt 0: got '   ', need some text"),
    "guidance nan": (["--guidance-scale", "nan"], "guidance_scale: got nan, must be a finite number >= 0"),
    "guidance inf": (["--guidance-scale", "inf"], "guidance_scale: got inf, must be a finite number >= 0"),
    "zero frames": (["--frames", "0"], "num_frames: got 0, must be >= 1"),
    "height 60": (["--height", "60"], "height x width: got 60 x 64, both must be multiples of 16"),
    "zero steps": (["--steps", "0"], "steps: got 0, must be >= 1"),
    "output under a file": (["--output-dir", "{tmp}/file/sub"], "--output-dir '{tmp}/file/sub' is not writable"),
    "missing checkpoint": (["--checkpoint", "{tmp}/absent"], "checkpoint folder '{tmp}/absent' does not exist"),
    # --duration instead of --frames (the two exclude each other); -2 s once wrote a 1-frame PNG with exit 0
    "negative duration": (["--duration", "-2"], "--duration: got -2 s, which at --fps 16 gives -32 frames"),
    "zero duration": (["--duration", "0"], "--duration: got 0 s, which at --fps 16 gives 0 frames"),
    "duration under a frame": (["--duration", "0.01"], "--duration: got 0.01 s, which at --fps 16 gives 0 frames"),
    "duration nan": (["--duration", "nan"], "--duration: got nan s, which at --fps 16 gives 0 frames"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_before_loading_the_model(case, runs, tmp_path, monkeypatch, capsys):
    root, _ = runs
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(generate_module, "load_exported_dit",
                        lambda *a, **k: pytest.fail("the DiT was loaded before the arguments were checked"))
    args = {"--checkpoint": str(root / "export"), "--tae": "toy-tae", "--text-encoders": "toy", "--prompt": "a cat",
            "--frames": "16", "--height": "64", "--width": "64", "--steps": "2",
            "--output-dir": str(tmp_path / "out")}
    changed, words = BAD_INPUTS[case]
    args[changed[0]] = changed[1].format(tmp=tmp_path)
    if "--duration" in args:
        del args["--frames"]
    assert main([item for pair in args.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("generate: error: "), err
    assert words.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_tools_generate_exits_with_the_status_of_main(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "generate.py"), "--checkpoint", str(tmp_path),
                             "--tae", "toy-tae", "--prompt", "x"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"generate: error: checkpoint folder {str(tmp_path)!r} has no config.yaml and no "
        "model.safetensors.index.json; an export folder holds config.yaml and model.safetensors.index.json with "
        "its shards, or a single model.safetensors (written by export_dit)"]


def test_missing_checkpoint_folder_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="checkpoint folder .*nowhere.* does not exist"):
        generate(["--checkpoint", str(missing), "--tae", "toy-tae", "--text-encoders", "toy", "--prompt", "x"])
    missing.mkdir()
    (missing / "config.yaml").write_text("name: x\n")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        generate(["--checkpoint", str(missing), "--tae", "toy-tae", "--text-encoders", "toy", "--prompt", "x"])


def test_a_prompt_longer_than_an_encoder_takes_is_warned_naming_encoder_and_length(caplog):
    encoders = TinyTextEncoders.for_model(load_config("tiny").model)
    prompts = ["a cat", 'a sign that says "' + "y" * 5000 + '"']  # ByT5 reads the quoted text only
    with caplog.at_level(logging.WARNING, logger="megatron_moviegen.generate"):
        warn_truncated(prompts, encoders.encode(prompts))
    lengths = {name: length for name, (_, length) in encoders.shapes.items()}
    assert len(caplog.records) == len(lengths)
    for name, length in lengths.items():
        assert any(f"prompt 1 ({len(prompts[1])} characters) fills all {length} positions of text encoder {name}; text beyond "
                   f"its max length {length} is cut" in r.getMessage() for r in caplog.records)


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


def test_aspect_ratio_buckets_follow_the_recipes_size_multiple():
    """t2v_30b trains 4:3 at 640x896 (64 px steps, so CP x SP splits it); generation must ask for that bucket, not
    the 656x880 a 16 px step gives."""
    args = parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--aspect-ratio", "4:3"])
    paper, tiny = load_config("t2v_30b"), load_config("tiny")
    assert (bucket_multiple(paper, 8), bucket_multiple(tiny, 8)) == (64, 16)
    cfg = sampling_config(args, bucket_multiple(paper, 8))
    assert (cfg.height, cfg.width) == (640, 896)
    assert (cfg.height, cfg.width) in {(b.height, b.width) for b in BucketTable(paper.data.buckets).buckets()}


def test_fps_defaults_to_a_trained_rate_and_warns_on_an_unseen_one():
    args = parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--duration", "2"])
    assert sampling_config(args, 16, trained_fps=(25, 30)).fps == 25  # 16 never trained: the lowest trained
    assert sampling_config(args, 16, trained_fps=(16, 24)).fps == 16
    assert sampling_config(args, 16).fps == 16  # an export that records nothing
    assert sampling_config(args, 16, trained_fps=(25,)).num_frames == 50
    unseen = parse_args(["--checkpoint", "x", "--tae", "toy-tae", "--prompt", "p", "--fps", "16"])
    with pytest.warns(UserWarning, match=r"--fps 16: the model was trained on FPS-n prompts with n in \[25\] only"):
        assert sampling_config(unseen, 16, trained_fps=(25,)).fps == 16


@pytest.mark.parametrize("env, prints", [({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, False),
                                         ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, True),
                                         ({"RANK": "1", "WORLD_SIZE": "2"}, False)])
def test_only_rank_0_of_torchrun_or_srun_prints_the_error(env, prints, tmp_path, monkeypatch, capsys):
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--checkpoint", str(tmp_path / "absent"), "--tae", "toy-tae", "--prompt", "a"]) == 2
    assert bool(capsys.readouterr().err) == prints


def test_a_rewritten_prompt_conditions_the_video_and_the_sidecar_keeps_both(runs):
    root, result = runs
    (sidecar,) = [json.loads(p.read_text()) for p in (root / "rewritten").glob("*.json")]
    assert sidecar["user_prompt"] == PROMPT and sidecar["prompt"] == result["rewritten"] != PROMPT
    assert sidecar["text_prompt"] == f"FPS-{SAMPLING['fps']} {result['rewritten']}"
    assert sidecar["prompt_rewriter"] == str(root / "rewriter")
    assert sidecar["file"].startswith("0000-" + "-".join(PROMPT.lower().split()[:3]))  # named by the user's words
