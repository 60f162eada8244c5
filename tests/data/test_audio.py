"""Audio from real media (PyAV): decoding, mixing and resampling, duration buckets, training segments, and audio
pre-encoding into shards (data.audio)."""

import json

import numpy as np
import pytest
import torch

from megatron_moviegen.conditioning import Conditioning
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.audio import AudioSegmentSampler, assign_audio, probe_audio, read_audio
from megatron_moviegen.data.config import AudioDataConfig
from megatron_moviegen.data.decode import ClipRequest, DecodeError, MediaReadError, PyAVDecoder
from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.models.audio_ae import AudioAutoencoder, AudioLatentEncoder
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.models.vision_tower import FrameFeatureEncoder
from megatron_moviegen.utils.audio_io import write_wav
from tests.audio import audio_tiny_config, bundled, preencode_rabbit, save_tiny_audio_ae

RABBIT = bundled("bigbuckbunny.mp4")


def test_the_rabbits_5_1_soundtrack_decodes_to_48_khz_mono_or_stereo():
    mono = read_audio(RABBIT, 48000, 1)
    assert mono.shape[0] == 1 and mono.dtype == torch.float32
    assert mono.shape[1] == pytest.approx(5.312 * 48000, abs=1100)
    assert 0.005 < mono.std() and mono.abs().max() <= 1.0  # sound, not silence
    stereo = read_audio(RABBIT, 48000, 2, start_s=1.0, duration_s=0.5)
    assert stereo.shape == (2, 24000)
    assert torch.allclose(read_audio(RABBIT, 48000, 1, start_s=1.0, duration_s=0.5), mono[:, 48000:72000], atol=1e-6)
    low = read_audio(RABBIT, 16000, 1, duration_s=1.0)
    assert low.shape == (1, 16000)


def test_unusable_audio_is_named(tmp_path):
    with pytest.raises(DecodeError, match="has no audio stream"):
        read_audio(bundled("carphone_pristine.mp4"))
    with pytest.raises(DecodeError, match="audio needs samples up to 9.000s but ends at 5.3"):
        read_audio(RABBIT, duration_s=9.0)
    with pytest.raises(MediaReadError, match="cannot read"):
        read_audio(tmp_path / "missing.mp4")
    (tmp_path / "text.mp4").write_text("not media")
    with pytest.raises(DecodeError, match="cannot open"):
        read_audio(tmp_path / "text.mp4")


def test_a_file_fills_the_longest_duration_that_fits_before_its_audio_or_video_ends():
    info = probe_audio(RABBIT)
    assert info.duration_s == pytest.approx(5.312) and info.video_duration_s == pytest.approx(5.28)
    config = AudioDataConfig(durations_s=[2.0, 4.0])
    clip = assign_audio(info, 0.0, None, config)
    assert (clip.duration_s, clip.bucket.num_frames, clip.bucket.name, clip.has_video) == (4.0, 100, "audio100", True)
    assert assign_audio(info, 2.0, None, config).duration_s == 2.0  # 3.28 s of video left
    assert assign_audio(info, 0.0, 1.5, config) == ("too short: 1.50s from 0s to the end of the entry's range; the "
                                                    "shortest duration in data.audio.durations_s is 2s")
    with pytest.raises(ConfigError, match="2.01 s is not a positive whole number of latent frames"):
        AudioDataConfig(durations_s=[2.01]).validate()


def test_training_segments_are_random_but_seeded():
    first = AudioSegmentSampler([RABBIT], 48000, 1, max_duration_s=2.0, seed=0)
    second = AudioSegmentSampler([RABBIT], 48000, 1, max_duration_s=2.0, seed=0)
    a, b = first.sample(3, 4800), second.sample(3, 4800)
    assert a.shape == (3, 1, 4800) and torch.equal(a, b) and not torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="fewer than the segment's 200000"):
        first.sample(1, 200000)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    write_wav(root / "tone.wav", 0.2 * torch.sin(torch.arange(3 * 48000) / 48000 * 2 * np.pi * 440)[None], 48000)
    extra = [ManifestEntry(str(root / "tone.wav"), "a tone"),  # audio without video: zero features
             ManifestEntry(str(bundled("carphone_pristine.mp4")), "a man on a phone"),  # video without audio
             ManifestEntry(str(RABBIT), "a rabbit", start_s=4.0)]  # 1.28 s left: below the 2.56 s window
    return root, preencode_rabbit(root, starts=(0.0, 2.7), extra=extra)


def test_shards_hold_the_autoencoders_latents_and_the_towers_features_of_the_same_window(rabbit):
    rabbit, _ = rabbit
    loader = LatentLoader(rabbit / "shards", batch_size=1, image_fraction=0.0, seed=0)
    samples = {r["key"]: loader.read_sample(shard, r) for shard, r in loader.records()}
    assert sorted(samples) == ["000000000", "000000001", "000000002"]
    second = samples["000000001"]  # the rabbit from 2.7 s
    assert second["meta"]["bucket"] == "audio64" and second["meta"]["audio"]["has_video"]
    assert second["meta"]["prompt"] == "a rabbit in a meadow" and second["meta"]["prompt_fps"] is None  # no FPS-n
    assert loader.prompt_fps() == []  # so an audio model records no trained FPS-n prefixes
    ae = AudioAutoencoder.from_pretrained(rabbit / "ae").eval()
    waveform = read_audio(RABBIT, 48000, 1, start_s=2.7, duration_s=2.56)
    expected = AudioLatentEncoder(ae).encode(waveform[None])[0]
    assert second["latents"].shape == (128, 64, 1, 1)
    assert torch.allclose(second["latents"].float(), expected, atol=0.02, rtol=0.01)  # stored as bf16
    frames = PyAVDecoder().clip_frames(RABBIT, ClipRequest(2.7, 25.0, 64, 64, 64))  # one per latent frame
    features = FrameFeatureEncoder(str(rabbit / "tower"), "cpu").encode(frames).T  # (32, 64)
    conditioning: Conditioning = second["conditioning"]
    assert conditioning.channels.shape == (32, 64, 1, 1)
    assert torch.allclose(conditioning.channels[:, :, 0, 0].float(), features, atol=0.02, rtol=0.01)
    assert set(conditioning.tokens) == {"t5"} and conditioning.infill is None
    tone = samples["000000002"]
    assert not tone["meta"]["audio"]["has_video"] and tone["conditioning"].channels.abs().sum() == 0
    rejects = {json.loads(line)["index"]: json.loads(line) for line in (rabbit / "shards/rejects.jsonl").open()}
    assert rejects[3]["kind"] == "decode" and "has no audio stream" in rejects[3]["reason"]
    assert rejects[4]["kind"] == "bucket" and "too short: 1.28s from 4s to the end of the video" in rejects[4]["reason"]


def test_resuming_with_another_audio_autoencoder_is_refused(rabbit, tmp_path):
    rabbit, entries = rabbit
    cfg = audio_tiny_config(rabbit)
    other = AudioLatentEncoder(AudioAutoencoder.from_pretrained(save_tiny_audio_ae(tmp_path / "other", seed=1)))
    with pytest.raises(ConfigError, match="holds audio encodings from AudioLatentEncoder .* one dataset cannot mix"):
        Preencoder(cfg.data, None, TinyTextEncoders.for_model(cfg.model), rabbit / "shards", audio_encoder=other,
                   frame_encoder=FrameFeatureEncoder(str(rabbit / "tower"), "cpu")).run(entries)


def test_an_autoencoder_of_other_rates_is_refused(rabbit, tmp_path):
    rabbit, _ = rabbit
    cfg = audio_tiny_config(rabbit, ["data.audio.sample_rate=16000"])
    encoder = AudioLatentEncoder(AudioAutoencoder.from_pretrained(rabbit / "ae"))
    with pytest.raises(ConfigError, match="data.audio: sample_rate 16000, channels 1, but the audio autoencoder takes "
                                          "48000 Hz"):
        Preencoder(cfg.data, None, TinyTextEncoders.for_model(cfg.model), tmp_path / "out", audio_encoder=encoder,
                   frame_encoder=FrameFeatureEncoder(str(rabbit / "tower"), "cpu")).run([])


def _preencode_tool():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "tools" / "preencode_latents.py"
    spec = importlib.util.spec_from_file_location("preencode_latents_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_preencodes_an_audio_recipe_and_refuses_the_other_autoencoder_flag(rabbit, tmp_path, capsys):
    root, _ = rabbit
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(RABBIT), "caption": "a rabbit", "start": 1.0}) + "\n")
    tool = _preencode_tool()
    common = ["--manifest", str(manifest), "--text-encoders", "toy", "--device", "cpu", "--num-workers", "0"]
    assert tool.main([*common, "--config", "audio_tiny", "--out", str(tmp_path / "a"), "--audio-ae", str(root / "ae"),
                      "--set", f"audio.video_encoder={root / 'tower'}"]) == 0
    assert json.loads((tmp_path / "a/summary.json").read_text())["per_bucket"] == {"audio64": 1}
    assert tool.main([*common, "--config", "audio_tiny", "--out", str(tmp_path / "b"), "--tae", "toy-conv"]) == 2
    assert tool.main([*common, "--config", "tiny", "--out", str(tmp_path / "c"), "--audio-ae", str(root / "ae")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2:] == ["preencode_latents: error: data.audio is set: give the audio autoencoder with --audio-ae, "
                        "not --tae",
                        "preencode_latents: error: --audio-ae is for a data.audio recipe (audio_13b, audio_tiny); this "
                        "one encodes video: give --tae"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
