"""Personalization data: the manifest's reference/subject fields, the CLIP vision tower behind ReferenceEncoder, and
pre-encoding a sample's reference image (a frame of another clip of the same subject, through an optional crop)
into its Conditioning.tokens["reference_image"]."""

import json
import random

import pytest
import torch
from transformers import CLIPVisionModel

from megatron_moviegen.config.schema import ConfigError, build
from megatron_moviegen.data.config import REFERENCE_SOURCE, DataConfig, ReferenceConfig
from megatron_moviegen.data.decode import ClipRequest, PyAVDecoder
from megatron_moviegen.data.manifest import ManifestEntry, manifest_record, read_manifest, resolve_subject_references
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.data.shards import decode_sample
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.models.vision_tower import CLIP_MEAN, CLIP_STD, ReferenceEncoder, save_tiny_vision_tower
from megatron_moviegen.recipes import load_config
from tests.data.test_preencode import read_all


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    return save_tiny_vision_tower(tmp_path_factory.mktemp("tower") / "vision_tower")


def top_left_quarter(frame: torch.Tensor) -> torch.Tensor:
    """A stand-in for a face detector's crop (data.reference.crop)."""
    return frame[: frame.shape[0] // 2, : frame.shape[1] // 2].contiguous()


def test_a_subject_takes_its_reference_from_another_file_else_another_window_else_none():
    entries = [ManifestEntry("/a.mp4", "x", subject="ann"), ManifestEntry("/a.mp4", "x", start_s=2.0, subject="ann"),
               ManifestEntry("/b.mp4", "x", start_s=1.0, subject="ann"),
               ManifestEntry("/c.mp4", "x", subject="bob"), ManifestEntry("/c.mp4", "x", start_s=3.0, subject="bob"),
               ManifestEntry("/d.mp4", "x", subject="cy"),
               ManifestEntry("/e.mp4", "x", subject="ann", reference="/face.png")]
    got = [(e.reference, e.reference_time) for e in resolve_subject_references(entries)]
    assert got == [("/b.mp4", 1.0), ("/b.mp4", 1.0), ("/e.mp4", 0.0),  # the next clip of ann in another file
                   ("/c.mp4", 3.0), ("/c.mp4", 0.0),  # bob has one file: its other window
                   (None, None),  # cy has no other clip: rejected later
                   ("/face.png", None)]  # a given reference is kept


def pairing_by_the_rule(entries: list[ManifestEntry]) -> list[tuple]:
    """The pairing rule as first written, quadratic in a subject's clips: (reference, reference_time) per entry."""
    clips: dict[str, list] = {}
    for e in entries:
        if e.subject is not None and (e.path, e.start_s) not in clips.get(e.subject, []):
            clips.setdefault(e.subject, []).append((e.path, e.start_s))
    got = []
    for e in entries:
        choice = (e.reference, e.reference_time)
        if e.reference is None and e.subject is not None:
            others = clips[e.subject]
            position = others.index((e.path, e.start_s))
            following = [others[(position + step) % len(others)] for step in range(1, len(others))]
            choice = next((c for c in following if c[0] != e.path), following[0] if following else (None, None))
        got.append(choice)
    return got


def test_subject_pairing_in_one_pass_follows_the_rule_on_random_manifests():
    rng = random.Random(0)
    for _ in range(300):
        entries = [ManifestEntry(f"/{rng.choice('abc')}.mp4", "x", start_s=float(rng.randint(0, 2)),
                                 subject=rng.choice(["ann", "bob", None]),
                                 reference=rng.choice([None, None, None, "/face.png"]))
                   for _ in range(rng.randint(0, 9))]
        got = [(e.reference, e.reference_time) for e in resolve_subject_references(entries)]
        assert got == pairing_by_the_rule(entries), entries


def test_manifest_reads_reference_fields_and_a_plain_manifest_hashes_as_before(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "v.mp4", "caption": "x", "reference": "faces/ann.png",
                                                  "reference_time": "1.5", "subject": "ann"}) + "\n")
    entry = read_manifest(tmp_path / "m.jsonl")[0]
    assert (entry.reference, entry.reference_time, entry.subject) == (str(tmp_path / "faces/ann.png"), 1.5, "ann")
    assert manifest_record(ManifestEntry("/a.mp4", "a cat")) == {"path": "/a.mp4", "caption": "a cat", "fps": None,
                                                                "start_s": 0.0, "end_s": None}


def test_reference_encoder_gives_the_towers_hidden_states_padded_and_masked(tower, clips):
    encoder = ReferenceEncoder(ReferenceConfig(encoder=str(tower), max_length=20, device="cpu"))
    assert (encoder.image_size, encoder.width, encoder.num_tokens) == (32, 32, 17)
    frame = PyAVDecoder().native_frames(clips / "carphone_pristine.mp4", ClipRequest(1.0, 29.97, 1, 144, 176))[0]
    other = PyAVDecoder().native_frames(clips / "bigbuckbunny.mp4", ClipRequest(1.0, 25.0, 1, 720, 1280))[0]
    tokens = encoder.encode([frame, other])  # two sizes in one batch
    assert tokens.embeddings.shape == (2, 20, 32) and tokens.mask.shape == (2, 20)
    assert tokens.mask[:, :17].all() and not tokens.mask[:, 17:].any() and not tokens.embeddings[:, 17:].any()
    # The same as the tower's own forward on the cover-resized, centre-cropped, CLIP-normalised 32x32 frame.
    model = CLIPVisionModel.from_pretrained(str(tower))
    square = torch.nn.functional.interpolate(frame.permute(2, 0, 1)[None].float(), size=(32, 39), mode="bilinear",
                                             antialias=True, align_corners=False)[..., 3:35].round().clamp(0, 255)
    pixels = (square / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model(pixel_values=pixels).last_hidden_state[0]
    torch.testing.assert_close(tokens.embeddings[0, :17], want, rtol=1e-5, atol=1e-5)
    assert (tokens.embeddings[0] - tokens.embeddings[1]).abs().max() > 0.1  # two subjects, two token sets


def test_reference_encoder_refuses_a_missing_folder_and_a_too_short_max_length(tower, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        ReferenceEncoder(ReferenceConfig(encoder=str(tmp_path / "nope"), device="cpu"))
    with pytest.raises(ValueError, match="max_length: 8, but .* gives 17 tokens"):
        ReferenceEncoder(ReferenceConfig(encoder=str(tower), max_length=8, device="cpu"))


def reference_config(tower, **reference) -> DataConfig:
    return build(DataConfig, {"buckets": {"resolution": 64, "aspect_ratios": ["1:1"], "durations_s": [1.0],
                                          "frame_rate": 8.0, "min_fps": 8.0, "max_fps": 8.0, "max_upscale": 2.0,
                                          "include_images": False},
                              "shard_size": 8, "encode_batch_size": 2, "num_workers": 0, "image_fraction": 0.0,
                              "reference": {"encoder": str(tower), "max_length": 18, "device": "cpu", **reference}})


def test_preencoded_sample_holds_the_tokens_of_another_clips_frame_through_the_crop(tower, clips, tmp_path):
    rabbit, phone = str(clips / "bigbuckbunny.mp4"), str(clips / "carphone_pristine.mp4")
    entries = resolve_subject_references([
        ManifestEntry(rabbit, "a clip", subject="rabbit"), ManifestEntry(rabbit, "a clip", start_s=2.5, subject="rabbit"),
        ManifestEntry(phone, "a clip", subject="phone"), ManifestEntry(phone, "a clip", start_s=2.0, subject="phone"),
        ManifestEntry(phone, "no subject, no reference"), ManifestEntry(rabbit, "alone", subject="cat"),
        ManifestEntry(phone, "past the end", reference=phone, reference_time=9.0)])
    config = reference_config(tower, crop="tests.data.test_reference:top_left_quarter")
    encoder = ReferenceEncoder(config.reference)
    Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), tmp_path,
               reference_encoder=encoder).run(entries)
    samples = {key: decode_sample(parts) for key, parts in read_all(tmp_path).items()}
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["index"], r["kind"]) for r in rejects] == [(4, "manifest"), (5, "manifest"), (6, "decode")]
    assert "neither 'reference' nor 'subject'" in rejects[0]["reason"]
    assert "subject 'cat' has no other clip" in rejects[1]["reason"]
    assert "reference_time 9.0 s is past the end" in rejects[2]["reason"]
    assert sorted(samples) == ["000000000", "000000001", "000000002", "000000003"]
    decoder = PyAVDecoder()
    for key, (path, time) in zip(sorted(samples), [(rabbit, 2.5), (rabbit, 0.0), (phone, 2.0), (phone, 0.0)]):
        sample = samples[key]
        info = decoder.probe(path)
        frame = decoder.native_frames(path, ClipRequest(time, info.fps, 1, info.height, info.width))[0]
        want = encoder.encode([top_left_quarter(frame)])
        got = sample["conditioning"].tokens[REFERENCE_SOURCE]
        assert torch.equal(got.mask, want.mask[0])
        assert torch.equal(got.embeddings, want.embeddings[0].to(got.embeddings.dtype))
        assert (sample["meta"]["reference"], sample["meta"]["reference_time"]) == (path, time)
        assert sample["meta"]["subject"] in ("rabbit", "phone") and len(sample["meta"]["reference_sha256"]) == 64
    record = json.loads((tmp_path / "preencode.json").read_text())
    assert record["reference"]["max_length"] == 18 and record["encoders"]["reference"]["name"] == "CLIPVisionModel"


def test_preencoding_refuses_a_missing_encoder_and_an_unimportable_crop(tower, tmp_path):
    text = TinyTextEncoders.for_model(load_config("tiny").model)
    with pytest.raises(ConfigError, match="needs the reference-image encoder"):
        Preencoder(reference_config(tower), TinyVideoEncoder(), text, tmp_path / "a").run([])
    with pytest.raises(ConfigError, match="reference.crop: cannot import 'no_such_module:crop'"):
        Preencoder(reference_config(tower, crop="no_such_module:crop"), TinyVideoEncoder(), text, tmp_path / "b")
    with pytest.raises(ConfigError, match="expected 'package.module:function'"):
        reference_config(tower, crop="just_a_name")


def test_recipes_need_the_model_source_and_data_reference_together():
    assert load_config("pt2v").model.extra_context[REFERENCE_SOURCE].max_length == 264
    with pytest.raises(ConfigError, match="must be set together .* only data.reference"):
        load_config("tiny", ["data.reference={encoder: x, max_length: 4}"])
    with pytest.raises(ConfigError, match="must be set together .* only the model entry"):
        load_config("tiny", ["model.extra_context={reference_image: {width: 8, max_length: 4}}"])
    with pytest.raises(ConfigError, match="max_length: 4, but data.reference.max_length is 8"):
        load_config("tiny", ["model.extra_context={reference_image: {width: 8, max_length: 4}}",
                             "data.reference={encoder: x, max_length: 8}"])


def test_a_trainable_tower_gets_its_input_pixels_instead_of_tokens(tower, clips, tmp_path):
    phone = str(clips / "carphone_pristine.mp4")
    entries = [ManifestEntry(phone, "a clip", reference=phone, reference_time=3.0)]
    config = reference_config(tower, trainable=True)
    encoder = ReferenceEncoder(config.reference)
    Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), tmp_path,
               reference_encoder=encoder).run(entries)
    sample = decode_sample(next(iter(read_all(tmp_path).values())))
    assert REFERENCE_SOURCE not in sample["conditioning"].tokens
    images = sample["conditioning"].images[REFERENCE_SOURCE]
    frame = PyAVDecoder().native_frames(phone, ClipRequest(3.0, 29.97, 1, 144, 176))[0]
    want = encoder.pixels([frame])[0]  # (3, 32, 32), normalised
    assert images.pixels.shape == (3, 32, 32) and bool(images.present)
    assert (images.pixels.float() - want).abs().max() < 0.02  # stored as bfloat16 (latent_dtype)
