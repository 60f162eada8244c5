"""Tiny random-weight UL2 (T5), MetaCLIP (CLIP text) and ByT5 checkpoints, built locally and saved to a
temporary folder (conftest.py) so the tests load them through the same `from_pretrained` path as the real ones."""

from __future__ import annotations

import string

import torch
from transformers import (
    ByT5Tokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from megatron_moviegen.text.config import EncoderConfig, TextEncodersConfig
from megatron_moviegen.text.toy_clip import byte_clip_tokenizer

torch.set_num_threads(1)

WORDS = ["a", "cat", "dog", "holds", "sign", "that", "says", "red", "car", "on", "the", "street"]


def t5_tokenizer() -> T5Tokenizer:
    chars = string.ascii_letters + string.digits + "-\"'.,!?“”’ "
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + w, -1.0) for w in WORDS]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_text_config(vocab_size: int, positions: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=positions, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def t5_config(vocab_size: int, d_model: int, ffn: str) -> T5Config:
    return T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
        feed_forward_proj=ffn, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def _save(model, tokenizer, folder) -> str:
    folder.mkdir()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def build_checkpoints(root) -> dict[str, str]:
    """name -> folder: ul2 (T5, width 32), metaclip (CLIP text, 77 positions, width 24), metaclip_256 (256
    positions), metaclip_full (a whole CLIPModel, like the hub's MetaCLIP repo), byt5 (T5, width 16)."""
    torch.manual_seed(0)
    t5_tok, clip_tok, byt5_tok = t5_tokenizer(), byte_clip_tokenizer(), ByT5Tokenizer()
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    full_clip = CLIPModel(CLIPConfig(text_config=clip_text_config(len(clip_tok), 77).to_dict(),
                                     vision_config=vision, projection_dim=8))
    return {
        "ul2": _save(T5EncoderModel(t5_config(len(t5_tok), 32, "gated-silu")), t5_tok, root / "ul2"),
        "metaclip": _save(CLIPTextModel(clip_text_config(len(clip_tok), 77)), clip_tok, root / "metaclip"),
        "metaclip_256": _save(CLIPTextModel(clip_text_config(len(clip_tok), 256)), clip_tok, root / "metaclip_256"),
        "metaclip_full": _save(full_clip, clip_tok, root / "metaclip_full"),
        "byt5": _save(T5EncoderModel(t5_config(len(byt5_tok), 16, "gated-gelu")), byt5_tok, root / "byt5"),
    }


def tiny_config(checkpoints: dict[str, str], **overrides) -> TextEncodersConfig:
    """All three tiny encoders on CPU in float32; MetaCLIP extended 77 -> 256 as in the paper."""
    fields = dict(
        ul2=EncoderConfig(checkpoints["ul2"], 24),
        metaclip=EncoderConfig(checkpoints["metaclip"], 256),
        byt5=EncoderConfig(checkpoints["byt5"], 32),
        batch_size=2, dtype="float32", device="cpu",
    )
    fields.update(overrides)
    return TextEncodersConfig(**fields)


def build_spiece_ul2_checkpoint(folder) -> str:
    """A T5 encoder beside a tokenizer saved only as `spiece.model`, the layout of the hub's google/ul2
    (no tokenizer.json). Needs `sentencepiece` to train the model here and `protobuf` for transformers to read it."""
    import sentencepiece as spm

    folder.mkdir()
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join([" ".join(WORDS), "a dog runs in the park at night", "the cat says hello"] * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=32, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    torch.manual_seed(0)
    T5EncoderModel(t5_config(132, 32, "gated-silu")).save_pretrained(folder)  # <= 32 pieces + 100 sentinels
    return str(folder)
