import dataclasses
import importlib.util

import pytest
import torch
from transformers import T5EncoderModel, T5Tokenizer

from megatron_moviegen.config.schema import ConfigError, apply_overrides, build, to_dict
from megatron_moviegen.text.config import EncoderConfig, TextEncodersConfig
from megatron_moviegen.text.encoders import TextEncoders
from tests.text.tiny_models import build_spiece_ul2_checkpoint, tiny_config

PROMPTS = [
    'a cat holds a sign that says "HELLO"',
    "a red car on the street",
    'a dog, “Hi” and "" and "42"',
]


@pytest.fixture(scope="module")
def encoders(checkpoints) -> TextEncoders:
    return TextEncoders(tiny_config(checkpoints))


def test_shapes_dtypes_and_padded_positions_are_zero(encoders):
    out = encoders.encode(PROMPTS)
    assert list(out) == ["ul2", "metaclip", "byt5"]
    for name, width, n in [("ul2", 32, 24), ("metaclip", 24, 256), ("byt5", 16, 32)]:
        embeddings, mask = out[name]
        assert embeddings.shape == (3, n, width) and embeddings.dtype == torch.float32
        assert mask.shape == (3, n) and mask.dtype == torch.bool
        assert not embeddings[~mask].any()
        assert embeddings[mask].abs().sum(-1).min() > 0
        # Real tokens come first, padding after.
        assert torch.equal(mask, torch.arange(n)[None] < mask.sum(1, keepdim=True))


def test_ul2_mask_matches_its_tokenizer_and_output_matches_the_model(encoders, checkpoints):
    embeddings, mask = encoders.encode(PROMPTS)["ul2"]
    tokenizer = T5Tokenizer.from_pretrained(checkpoints["ul2"])
    model = T5EncoderModel.from_pretrained(checkpoints["ul2"]).eval()
    for row, prompt in enumerate(PROMPTS):
        tokens = tokenizer([prompt], return_tensors="pt")
        n = tokens.input_ids.shape[1]
        assert mask[row].sum() == n and tokens.input_ids[0, -1] == tokenizer.eos_token_id
        with torch.no_grad():
            reference = model(**tokens).last_hidden_state[0]  # (n, 32)
        torch.testing.assert_close(embeddings[row, :n], reference, rtol=0, atol=1e-5)


def test_byt5_sees_only_quoted_text(encoders):
    embeddings, mask = encoders.encode(PROMPTS)["byt5"]
    # '"HELLO"' = 7 bytes + </s>; '"Hi" "42"' = 9 bytes + </s> (the empty quotes add nothing).
    assert mask.sum(1).tolist() == [8, 0, 10]
    assert not embeddings[1].any()
    alone, _ = encoders.encode(['"HELLO"'])["byt5"]
    torch.testing.assert_close(embeddings[0], alone[0], rtol=0, atol=1e-6)


def test_byt5_without_any_quotes_in_the_batch_is_all_masked(encoders):
    embeddings, mask = encoders.encode(["a red car", "a cat"])["byt5"]
    assert embeddings.shape == (2, 32, 16) and not mask.any() and not embeddings.any()


def test_byt5_truncates_long_quoted_text_to_max_length(encoders):
    _, mask = encoders.encode(['"' + "x" * 200 + '"'])["byt5"]
    assert mask.all()


def test_fps_prefix_reaches_ul2_and_metaclip_but_not_byt5(encoders):
    with_fps = encoders.encode(PROMPTS, fps=16)
    prefixed = encoders.encode(["FPS-16 " + p for p in PROMPTS])
    plain = encoders.encode(PROMPTS)
    for name in ("ul2", "metaclip", "byt5"):
        assert torch.equal(with_fps[name][0], prefixed[name][0]) and torch.equal(with_fps[name][1], prefixed[name][1])
    for name in ("ul2", "metaclip"):
        assert (with_fps[name][1].sum(1) > plain[name][1].sum(1)).all()
    assert torch.equal(with_fps["byt5"][0], plain["byt5"][0])


def test_per_prompt_fps(encoders):
    out = encoders.encode(PROMPTS[:2], fps=[16, 24])
    expected = encoders.encode(["FPS-16 " + PROMPTS[0], "FPS-24 " + PROMPTS[1]])
    assert torch.equal(out["ul2"][0], expected["ul2"][0])
    with pytest.raises(ValueError, match="2 values for 3 prompts"):
        encoders.encode(PROMPTS, fps=[16, 24])


def test_deterministic_across_calls_and_loads(encoders, checkpoints):
    first = encoders.encode(PROMPTS)
    second = encoders.encode(PROMPTS)
    reloaded = TextEncoders(tiny_config(checkpoints)).encode(PROMPTS)
    for name in first:
        assert torch.equal(first[name][0], second[name][0])
        assert torch.equal(first[name][0], reloaded[name][0])


def test_batch_size_does_not_change_results(encoders, checkpoints):
    big_batch = TextEncoders(tiny_config(checkpoints, batch_size=8)).encode(PROMPTS)
    small_batch = encoders.encode(PROMPTS)  # batch_size 2: two batches
    for name in big_batch:
        torch.testing.assert_close(big_batch[name][0], small_batch[name][0], rtol=0, atol=1e-6)
        assert torch.equal(big_batch[name][1], small_batch[name][1])


def test_frozen_eval_no_grad(encoders):
    for encoder in encoders.encoders.values():
        assert not encoder.model.training
        assert not any(p.requires_grad for p in encoder.model.parameters())
    embeddings, _ = encoders.encode(PROMPTS[:1])["ul2"]
    assert not embeddings.requires_grad


def test_empty_prompt_list_gives_empty_batches(encoders):
    embeddings, mask = encoders.encode([])["metaclip"]
    assert embeddings.shape == (0, 256, 24) and mask.shape == (0, 256)


def test_a_single_string_is_rejected(encoders):
    with pytest.raises(TypeError, match="list of str"):
        encoders.encode("a cat")


def test_disabled_encoders_are_not_loaded(checkpoints):
    config = tiny_config(checkpoints)
    config.metaclip.enabled = False
    out = TextEncoders(config).encode(PROMPTS[:1])
    assert list(out) == ["ul2", "byt5"]


def test_bfloat16_dtype(checkpoints):
    out = TextEncoders(tiny_config(checkpoints, dtype="bfloat16")).encode(PROMPTS[:1])
    assert all(embeddings.dtype == torch.bfloat16 for embeddings, _ in out.values())


def test_missing_local_path_names_the_path(checkpoints, tmp_path):
    missing = str(tmp_path / "no_such_ul2")
    config = tiny_config(checkpoints, ul2=EncoderConfig(missing, 24))
    with pytest.raises(FileNotFoundError, match="no_such_ul2"):
        TextEncoders(config)


def test_hub_id_not_in_cache_under_hf_hub_offline(checkpoints, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tiny_config(checkpoints, byt5=EncoderConfig("nonexistent-org/not-a-byt5", 32))
    with pytest.raises(OSError, match="nonexistent-org/not-a-byt5.*HF_HUB_OFFLINE=1"):
        TextEncoders(config)


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate not installed")
def test_device_map_gives_the_same_embeddings(encoders, checkpoints):
    config = tiny_config(checkpoints)
    config.ul2 = dataclasses.replace(config.ul2, device_map="auto")
    sharded = TextEncoders(config).encode(PROMPTS)
    torch.testing.assert_close(sharded["ul2"][0], encoders.encode(PROMPTS)["ul2"][0], rtol=0, atol=1e-6)


def test_config_defaults_are_the_papers():
    config = TextEncodersConfig()
    assert {n: (c.path, c.max_length) for n, c in config.encoders().items()} == {
        "ul2": ("google/ul2", 300),
        "metaclip": ("facebook/metaclip-h14-fullcc2.5b", 256),
        "byt5": ("google/byt5-large", 100),
    }


def test_config_builds_from_yaml_data_with_overrides():
    data = apply_overrides(to_dict(TextEncodersConfig()), ["ul2.device_map=auto", "byt5.max_length=64"])
    config = build(TextEncodersConfig, data)
    assert config.ul2.device_map == "auto" and config.byt5.max_length == 64


@pytest.mark.parametrize(
    "override, field",
    [
        ("batch_size=0", "batch_size"),
        ("ul2.max_length=0", "ul2.max_length"),
        ("metaclip.path=''", "metaclip.path"),
        ("ul2.device_map=everywhere", "ul2.device_map"),
        ("dtype=int8", "dtype"),
        ("device=tpu0", "device"),
    ],
)
def test_config_errors_name_the_field(override, field):
    data = apply_overrides(to_dict(TextEncodersConfig()), [override])
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build(TextEncodersConfig, data)


def test_config_rejects_all_disabled():
    overrides = [f"{name}.enabled=false" for name in TextEncodersConfig.NAMES]
    with pytest.raises(ConfigError, match="enable at least one"):
        build(TextEncodersConfig, apply_overrides(to_dict(TextEncodersConfig()), overrides))


@pytest.mark.skipif(
    importlib.util.find_spec("sentencepiece") is None or importlib.util.find_spec("google.protobuf") is None,
    reason="sentencepiece and protobuf are needed to read a spiece.model-only tokenizer",
)
def test_ul2_tokenizer_from_spiece_model_only_matches_sentencepiece(checkpoints, tmp_path):
    import sentencepiece as spm

    folder = build_spiece_ul2_checkpoint(tmp_path / "ul2_spiece")
    config = tiny_config(checkpoints, ul2=EncoderConfig(folder, 24))
    config.metaclip.enabled = config.byt5.enabled = False
    _, mask = TextEncoders(config).encode(PROMPTS)["ul2"]
    pieces = spm.SentencePieceProcessor(model_file=f"{folder}/spiece.model")
    assert mask.sum(1).tolist() == [min(len(pieces.encode(p)) + 1, 24) for p in PROMPTS]  # + </s>


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_device_and_dtype_are_cuda_bfloat16(checkpoints):
    out = TextEncoders(tiny_config(checkpoints, dtype="auto", device="auto")).encode(PROMPTS)
    for embeddings, mask in out.values():
        assert embeddings.device.type == mask.device.type == "cuda"
        assert embeddings.dtype == torch.bfloat16


def test_a_path_override_keeps_the_encoders_other_fields():
    from megatron_moviegen.text.config import text_encoders_config

    config = text_encoders_config(["ul2.path=/models/ul2", "ul2.subfolder=text_encoder"], base={"device": "cpu"})
    assert (config.ul2.path, config.ul2.max_length, config.ul2.subfolder) == ("/models/ul2", 300, "text_encoder")
    assert config.byt5 == TextEncodersConfig().byt5 and config.device == "cpu"


def test_paper_encoders_of_another_width_are_refused_before_any_weights_load(checkpoints):
    """generate / the demo / export_diffusers check each encoder's width from its config.json (inference/components.py
    paper_text_encoders) before the DiT or any encoder loads."""
    from dataclasses import replace

    from megatron_moviegen.config.schema import ConfigError
    from megatron_moviegen.inference.components import paper_text_encoders
    from megatron_moviegen.recipes import load_config

    model = load_config("tiny").model  # ul2 32, metaclip 24, byt5 16 wide: the test checkpoints' widths
    overrides = [f"ul2.path={checkpoints['ul2']}", f"metaclip.path={checkpoints['metaclip_full']}",
                 f"byt5.path={checkpoints['byt5']}"]
    paper_text_encoders("paper", overrides, model)  # a whole CLIPModel's text tower is read through text_config
    model.text_encoders["ul2"] = replace(model.text_encoders["ul2"], width=64)
    with pytest.raises(ConfigError, match=r"text encoder ul2: .* gives 32-wide embeddings, but the model was trained "
                                          r"on 64-wide ones"):
        paper_text_encoders("paper", overrides, model)
