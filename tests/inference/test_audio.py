"""Movie Gen Audio end to end on the bundled rabbit: audio shards -> `train --config audio_tiny` at TP=2 + SP ->
export -> `generate-audio` (windows blended with triangle weights, the .wav and the .mp4 with both streams), sampling
under TP=2 + SP equal to one process, continuation keeping the given audio, and one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import pytest
import torch

from megatron_moviegen.generate_audio import main
from megatron_moviegen.utils.audio_io import read_wav
from tests.audio import audio_tiny_config, bundled, preencode_rabbit
from tests.harness import run_distributed
from tests.inference.jobs import written
from tests.training.test_pretrain import TP2_SP, _export, _in_turn

RABBIT = bundled("bigbuckbunny.mp4")
PROMPT = "a rabbit in a meadow"


def _train(rank, world_size, root, steps):
    from megatron_moviegen.training.pretrain import pretrain

    cfg = audio_tiny_config(root, [f"train.checkpoint_dir={root / 'ckpt'}", f"train.steps={steps}",
                                   "train.save_every=3", "train.lr_warmup_steps=1", "train.progress_bar=false",
                                   *TP2_SP])
    return pretrain(cfg).history


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_run")
    preencode_rabbit(root)
    history = run_distributed(_train, 2, args=(root, 3))[0]
    run_distributed(_export, 1, args=(root / "ckpt", root / "export"))
    return root, history


def test_the_audio_dit_trains_through_the_shared_loop_at_tp2_with_sp(audio_run):
    _, history = audio_run
    assert [row["step"] for row in history] == [1, 2, 3]
    assert all(0 < row["loss"] < 10 and row["grad_norm"] > 0 for row in history)


def _cli(root, *extra):
    return ["--checkpoint", str(root / "export"), "--audio-ae", str(root / "ae"), "--text-encoders", "toy",
            "--prompt", PROMPT, "--steps", "3", "--output-dir", str(root / "out"), *extra]


def test_generate_audio_writes_the_wav_and_the_video_with_both_streams_of_equal_length(audio_run):
    root, _ = audio_run
    # The installed command (pyproject's console script), as a user runs it.
    proc = subprocess.run([sys.executable, "-c", "from megatron_moviegen.generate_audio import main; "
                           "raise SystemExit(main())", *_cli(root, "--video", str(RABBIT))],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = written(root / "out", "0000-a-rabbit-in-a-meadow-seed0", ".wav").with_suffix("")
    waveform, rate = read_wav(stem.with_suffix(".wav"))
    assert rate == 48000 and waveform.shape == (1, round(5.28 * 48000))
    with av.open(str(stem.with_suffix(".mp4"))) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, audio.codec_context.name, audio.codec_context.sample_rate) == \
            ("h264", "aac", 48000)
        video_s, audio_s = float(video.duration * video.time_base), float(audio.duration * audio.time_base)
        decoded = sum(frame.samples for frame in container.decode(audio)) / 48000
    assert video_s == pytest.approx(5.28, abs=0.01) and audio_s == pytest.approx(video_s, abs=0.05)
    assert decoded == pytest.approx(5.28, abs=0.05)  # the AAC track decodes to the video's length
    sidecar = json.loads(stem.with_suffix(".json").read_text())
    assert sidecar["latent_frames"] == 132 and sidecar["windows"] == [[0, 64], [48, 112], [68, 132]]
    assert sidecar["blend"] == "triangle" and sidecar["video"] == str(RABBIT)
    assert (sidecar["solver"], sidecar["schedule"]) == ("midpoint", "linear")  # the paper's default (SPEC 7)


def _sample(rank, world_size, root, overrides, continuation):
    from megatron_moviegen.checkpoints.export import load_exported_dit
    from megatron_moviegen.data.audio import read_audio
    from megatron_moviegen.inference.audio import AudioPipeline, AudioSamplingConfig, read_video_frames
    from megatron_moviegen.models.audio_ae import AudioAutoencoder
    from megatron_moviegen.models.toy_encoders import TinyTextEncoders
    from megatron_moviegen.models.vision_tower import FrameFeatureEncoder
    from megatron_moviegen.parallel.initialize import destroy

    cfg, chunks = load_exported_dit(root / "export", overrides)
    pipeline = AudioPipeline(chunks[0], AudioAutoencoder.from_pretrained(root / "ae"),
                             TinyTextEncoders.for_model(cfg.model), FrameFeatureEncoder(str(root / "tower"), "cpu"),
                             cfg.data.audio)
    frames = 80  # 3.2 s: two windows of 64 overlapping by 48
    features = pipeline.video_features(read_video_frames(RABBIT, frames, cfg.data.audio), frames)
    infill = pipeline.encode_audio(read_audio(RABBIT, 48000, 1, duration_s=1.0), frames) if continuation else None
    settings = AudioSamplingConfig(steps=3, overlap_s=0.64)
    latents = pipeline.sample_latents(PROMPT, features, settings, infill)
    destroy()
    return {"latents": latents, "infill": infill}


@pytest.fixture(scope="module")
def one_process(audio_run):
    """3.2 s sampled on one process, freely and continuing the rabbit's first second, in one launch."""
    root, _ = audio_run
    return run_distributed(_in_turn, 1, args=([(_sample, (root, [], False)), (_sample, (root, [], True))],))[0]


def test_sampling_at_tp2_with_sp_gives_the_single_process_audio(audio_run, one_process):
    root, _ = audio_run
    one = one_process[0]["latents"]
    two = run_distributed(_sample, 2, args=(root, TP2_SP, False))
    assert one.shape == (1, 128, 80, 1, 1)
    for rank in two:  # every rank holds the whole sample
        assert ((rank["latents"] - one).norm() / one.norm()).item() < 1e-5


def test_continuation_keeps_the_given_audio_and_generates_the_rest(one_process):
    free, given = one_process[0]["latents"], one_process[1]
    known = given["infill"].known[0]
    assert known.sum() == 25 and known[:25].all()  # 1 s = 25 whole latent frames
    assert torch.equal(given["latents"][:, :, :25], given["infill"].latents[:, :, :25])
    # The generated part depends on the given part: the model reads it through its infill channels.
    assert not torch.allclose(given["latents"][:, :, 25:], free[:, :, 25:], atol=1e-3)


def test_continuation_from_the_command_line_is_recorded(audio_run):
    root, _ = audio_run
    assert main(_cli(root, "--seconds", "2", "--continue-from", str(RABBIT), "--continue-seconds", "0.5",
                     "--precision", "bf16", "--output-dir", str(root / "continued"))) == 0
    sidecar = json.loads(written(root / "continued", "0000-a-rabbit-in-a-meadow-seed0", ".json").read_text())
    assert sidecar["continued_frames"] == 12 and sidecar["video"] is None and sidecar["windows"] == [[0, 50]]


@pytest.fixture(scope="module")
def video_export(audio_run, tmp_path_factory):
    """The audio export's files under a config without data.audio and of kind t2v: what a video export says."""
    import shutil

    import yaml

    root, _ = audio_run
    folder = tmp_path_factory.mktemp("not_audio") / "export"
    shutil.copytree(root / "export", folder)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["data"]["audio"] = None
    config["kind"] = "t2v"  # the kind a video export records
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.parametrize("case", ["video export", "missing video", "bad guidance", "missing tower", "window too long",
                                  "longer than the video"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, audio_run, video_export, tmp_path, capsys):
    root, _ = audio_run
    args = {"video export": _cli(root, "--seconds", "1") + [],
            "missing video": _cli(root, "--video", str(tmp_path / "none.mp4")),
            "bad guidance": _cli(root, "--seconds", "1", "--guidance-scale", "nan"),
            "missing tower": _cli(root, "--seconds", "1", "--video-encoder", str(tmp_path / "no_tower")),
            "window too long": _cli(root, "--seconds", "1", "--window-seconds", "10"),
            "longer than the video": _cli(root, "--video", str(RABBIT), "--seconds", "9")}[case]
    if case == "video export":
        args[1] = str(video_export)
    args[args.index("--output-dir") + 1] = str(tmp_path / "out")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = {"video export": "is not an audio export (its config has no data.audio)",
                "missing video": "--video: ", "bad guidance": "guidance_scale: got nan",
                "missing tower": "--video-encoder", "window too long": "window_s: got 10.0 s = 250 latent frames",
                "longer than the video": "--seconds: got 9.0, longer than the video (5.28 s)"}
    assert len(err) == 1 and err[0].startswith("generate_audio: error: ") and expected[case] in err[0], err
    assert not (tmp_path / "out").exists()
