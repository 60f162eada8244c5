import torch
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from megatron_moviegen.text.config import EncoderConfig
from megatron_moviegen.text.encoders import TextEncoders
from megatron_moviegen.text.metaclip import extend_clip_context, extend_position_table
from tests.text.tiny_models import tiny_config


def metaclip_only(checkpoints, path_key="metaclip"):
    config = tiny_config(checkpoints, metaclip=EncoderConfig(checkpoints[path_key], 256))
    config.ul2.enabled = config.byt5.enabled = False
    return TextEncoders(config)


def test_extend_position_table_keeps_rows_and_interpolates_the_tail():
    table = torch.randn(77, 8, dtype=torch.float64)
    new = extend_position_table(table, 256)
    assert new.shape == (256, 8)
    assert torch.equal(new[:77], table)
    assert torch.equal(new[255], table[76])  # the stretched table ends where the original ends
    p = 100
    x = p * 76 / 255
    lo = int(x)
    expected = table[lo] * (lo + 1 - x) + table[lo + 1] * (x - lo)
    torch.testing.assert_close(new[p], expected, rtol=0, atol=1e-6)


def test_extension_updates_config_and_position_ids(checkpoints):
    model = CLIPTextModel.from_pretrained(checkpoints["metaclip"])
    original = model.embeddings.position_embedding.weight.clone()
    extend_clip_context(model, 256)
    assert model.config.max_position_embeddings == 256
    assert torch.equal(model.embeddings.position_ids, torch.arange(256)[None])
    assert torch.equal(model.embeddings.position_embedding.weight[:77], original)


def test_short_prompt_encodes_exactly_as_the_original_77_token_model(checkpoints):
    prompts = ["a cat holds a sign", "FPS-16 a red car on the street"]
    extended = metaclip_only(checkpoints).encode(prompts)["metaclip"]
    assert extended[0].shape == (2, 256, 24)

    original = CLIPTextModel.from_pretrained(checkpoints["metaclip"]).eval()
    tokens = CLIPTokenizer.from_pretrained(checkpoints["metaclip"])(
        prompts, padding="max_length", max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        reference = original(**tokens).last_hidden_state  # (2, 77, 24)
    for row in range(2):
        n = int(tokens.attention_mask[row].sum())
        assert extended[1][row].sum() == n
        # Same numbers up to float32 reassociation: the two runs use different sequence lengths.
        torch.testing.assert_close(extended[0][row, :n], reference[row, :n], rtol=0, atol=1e-6)
        assert not extended[0][row, n:].any()


def test_long_prompt_uses_positions_beyond_77(checkpoints):
    long_prompt = " ".join(["a red car on the street"] * 40)  # ~1000 characters, one token each
    embeddings, mask = metaclip_only(checkpoints).encode([long_prompt])["metaclip"]
    assert mask.all()  # truncated to 256 tokens, all real
    assert embeddings[0, 200:].abs().sum() > 0


def test_checkpoint_with_256_positions_loads_as_is(checkpoints):
    saved = CLIPTextModel.from_pretrained(checkpoints["metaclip_256"]).embeddings.position_embedding.weight
    encoder = metaclip_only(checkpoints, "metaclip_256").encoders["metaclip"]
    assert torch.equal(encoder.model.embeddings.position_embedding.weight, saved)


def test_full_clip_checkpoint_loads_its_text_tower(checkpoints):
    """The hub's MetaCLIP repo holds a whole CLIPModel; only its text tower is loaded."""
    embeddings, mask = metaclip_only(checkpoints, "metaclip_full").encode(["a cat"])["metaclip"]
    full = CLIPModel.from_pretrained(checkpoints["metaclip_full"]).eval()
    tokens = CLIPTokenizer.from_pretrained(checkpoints["metaclip_full"])(["a cat"], return_tensors="pt")
    with torch.no_grad():
        reference = full.text_model(**tokens).last_hidden_state  # (1, n, 24)
    n = reference.shape[1]
    assert mask.sum() == n
    torch.testing.assert_close(embeddings[:, :n], reference, rtol=0, atol=1e-6)
