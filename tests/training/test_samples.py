"""Sample videos while training (train.samples): the files a TP=2 + SP run writes, training unchanged by them, the
config errors, and the TensorBoard media."""

import json

import av
import numpy as np
import pytest

from megatron_moviegen.config import ConfigError
from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.inference.pipeline import resolve_fps
from megatron_moviegen.recipes import load_config
from megatron_moviegen.training.metrics import add_tensorboard_media, frame_strip
from tests.harness import run_distributed
from tests.inference.jobs import written
from tests.training.test_pretrain import TP2_SP, _overrides, _train

PROMPTS = ["a red ball", 'a sign that says "HI"']
# 32 frames at 64x64: latents (16, 4, 8, 8), 64 tokens; with guidance a batch of 2, more than a training microbatch.
SAMPLES = ['train.samples.prompts=["a red ball", "a sign that says \\"HI\\""]', "train.samples.every=2",
           "train.samples.tae=toy-tae", "train.samples.text_encoders=toy", "train.samples.num_frames=32",
           "train.samples.height=64", "train.samples.width=64", "train.samples.steps=3", "train.samples.seed=7"]
STEMS = ["0000-a-red-ball-seed7", "0001-a-sign-that-says-hi-seed8"]  # prompt i: seed 7 + i, then "-<hash>"


def _train_with_and_without_samples(rank, world_size, shards, root):
    """One after the other in the same processes (a third of the start-up time of three launches); each run seeds
    itself. The third run is data parallel (DP=2, TP=1): both replicas sample."""
    sampled = _train(rank, world_size, _overrides(shards, root / "sampled", 5, [*TP2_SP, *SAMPLES]))
    plain = _train(rank, world_size, _overrides(shards, root / "plain", 5, TP2_SP))
    _train(rank, world_size, _overrides(shards, root / "dp2", 2, SAMPLES))
    return sampled["history"], plain["history"]


@pytest.fixture(scope="module")
def tp2_runs(tiny_shards, tmp_path_factory):
    """5 steps at TP=2 + SP with samples every 2 steps and at the end, the same run without samples, and 2 steps at
    DP=2 with samples."""
    root = tmp_path_factory.mktemp("samples")
    sampled, plain = run_distributed(_train_with_and_without_samples, 2, args=(tiny_shards, root))[-1]
    fps = resolve_fps(None, LatentLoader(tiny_shards, 1, 0.0, 0).prompt_fps())  # a rate the shards hold, as generate
    return root, sampled, plain, fps


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)]), stream.average_rate


def test_samples_are_written_every_k_steps_and_at_the_end_and_decode_to_the_configured_size(tp2_runs):
    root, history, _, fps = tp2_runs
    folder = root / "sampled" / "samples"
    assert sorted(p.name for p in folder.iterdir()) == ["iter_0000002", "iter_0000004", "iter_0000005"]
    for step_dir in folder.iterdir():
        videos = [written(step_dir, stem) for stem in STEMS]
        assert sorted(p.name for p in step_dir.iterdir()) == sorted(v.with_suffix(e).name for v in videos
                                                                   for e in (".json", ".mp4"))
        for stem, prompt, video in zip(STEMS, PROMPTS, videos):
            frames, rate = _decode(video)
            assert frames.shape == (32, 64, 64, 3) and rate == fps
            sidecar = json.loads(video.with_suffix(".json").read_text())
            assert (sidecar["prompt"], sidecar["text_prompt"], sidecar["steps"]) == (prompt, f"FPS-{fps} {prompt}", 3)
            assert sidecar["seed"] == 7 + STEMS.index(stem) and sidecar["tae"] == "toy-tae"
    rows = {row["step"]: row for row in history}
    assert [step for step, row in rows.items() if "sample_s" in row] == [2, 4, 5]
    assert rows[4]["sample_files"] == [str(written(folder / "iter_0000004", s)) for s in STEMS]
    # The same noise, other weights: the videos change as the model trains.
    early, _ = _decode(written(folder / "iter_0000002", STEMS[0]))
    late, _ = _decode(written(folder / "iter_0000005", STEMS[0]))
    assert np.abs(early.astype(int) - late.astype(int)).mean() > 0.5


def test_data_parallel_replicas_sample_too(tp2_runs):
    root, _, _, _ = tp2_runs
    step_dir = root / "dp2" / "samples" / "iter_0000002"
    videos = [written(step_dir, stem) for stem in STEMS]
    assert sorted(p.name for p in step_dir.iterdir()) == sorted(v.with_suffix(e).name for v in videos
                                                               for e in (".json", ".mp4"))
    assert _decode(videos[1])[0].shape == (32, 64, 64, 3)


def test_sampling_leaves_the_training_losses_bit_identical(tp2_runs):
    _, sampled, plain, _ = tp2_runs
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in sampled] == \
        [(r["step"], r["loss"], r["grad_norm"]) for r in plain]


def _config_error(extra):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", ['train.samples.prompts=["a red ball"]', *extra])
    message = str(error.value)
    assert "\n" not in message
    return message


def test_sampling_config_errors_name_the_field_in_one_line():
    assert _config_error(["train.samples.text_encoders=toy"]).startswith(
        "train.samples.tae: required to decode the samples")
    assert _config_error(["train.samples.tae=toy-tae"]).startswith(
        "train.samples.text_encoders: required to encode the prompts: 'paper' or 'toy'")
    valid = ["train.samples.tae=toy-tae", "train.samples.text_encoders=toy"]
    assert _config_error([*valid, "train.samples.height=72", "train.samples.width=64"]) == (
        "train.samples: height x width: got 72 x 64, both must be multiples of 16 (TAE compression 8 x patch 2)")
    assert "a token grid (t, h, w) = (9, 2, 2)" in _config_error([*valid, "train.samples.num_frames=72",
                                                                  "train.samples.height=32", "train.samples.width=32"])
    assert "parallel.pipeline_model_parallel_size is 2" in _config_error(
        [*valid, "parallel.pipeline_model_parallel_size=2", "parallel.tensor_model_parallel_size=1"])
    assert _config_error([*valid, "train.samples.ema=true"]).startswith("train.samples.ema: true, but ema_decay is null")
    assert _config_error(["train.samples.prompts=[]", *valid]).startswith("train.samples.prompts: empty")


class _RecordingWriter:
    def __init__(self):
        self.calls = []

    def add_video(self, tag, video, step, fps):
        self.calls.append(("video", tag, video.shape, step, fps))

    def add_image(self, tag, image, step, dataformats):
        self.calls.append(("image", tag, image.shape, step, dataformats))


def test_tensorboard_gets_a_video_with_moviepy_and_a_frame_strip_without(monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (32, 16, 24, 3), dtype=np.uint8)
    writer = _RecordingWriter()
    monkeypatch.setattr("megatron_moviegen.training.metrics.tensorboard_encodes_video", lambda: False)
    add_tensorboard_media(writer, "samples/x", frames, 4, 16)
    monkeypatch.setattr("megatron_moviegen.training.metrics.tensorboard_encodes_video", lambda: True)
    add_tensorboard_media(writer, "samples/x", frames, 6, 16)
    add_tensorboard_media(writer, "samples/image", frames[:1], 6, 16)
    assert writer.calls == [("image", "samples/x", (16, 8 * 24, 3), 4, "HWC"),
                            ("video", "samples/x", (1, 32, 3, 16, 24), 6, 16),
                            ("image", "samples/image", (16, 24, 3), 6, "HWC")]
    strip = frame_strip(frames)
    assert np.array_equal(strip[:, :24], frames[0]) and np.array_equal(strip[:, -24:], frames[-1])


def test_frame_strip_lands_in_a_real_tensorboard_event_file(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setattr("megatron_moviegen.training.metrics.tensorboard_encodes_video", lambda: False)
    frames = np.random.default_rng(0).integers(0, 256, (32, 16, 24, 3), dtype=np.uint8)
    with SummaryWriter(str(tmp_path)) as writer:
        add_tensorboard_media(writer, "samples/0000-a-red-ball", frames, 20, 16)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    [image] = events.Images("samples/0000-a-red-ball")
    assert (image.step, image.width, image.height) == (20, 8 * 24, 16)
