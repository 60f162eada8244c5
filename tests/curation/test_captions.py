"""Captions: a sidecar file wins; without one, a local transformers image-text-to-text folder (a tiny random BLIP)."""

import pytest

from megatron_moviegen.curation.captions import clip_caption
from megatron_moviegen.curation.config import AnalysisConfig
from megatron_moviegen.curation.synthetic import bundled_frames

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "rabbit", "in", "green", "meadow", "man", "car"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A BLIP captioner of random weights (vision and text width 16) with a 12-word BERT tokenizer, saved as a
    folder the way a downloaded one is."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil,
                              BlipProcessor)

    folder = tmp_path_factory.mktemp("blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    torch.manual_seed(0)
    layer = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(text_config=dict(vocab_size=len(WORDS), max_position_embeddings=32, bos_token_id=2,
                                         sep_token_id=3, pad_token_id=0, eos_token_id=3, **layer),
                        vision_config=dict(image_size=32, patch_size=16, **layer), projection_dim=8)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    BlipProcessor(BlipImageProcessorPil(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return str(folder)


def test_a_model_captions_clips_without_a_sidecar_and_a_sidecar_wins(tiny_blip, tmp_path):
    frames = bundled_frames("bigbuckbunny.mp4", 3, 72, 128)
    video = tmp_path / "raw.mp4"
    analysis = AnalysisConfig(captioner=tiny_blip, caption_tokens=6)
    caption, record = clip_caption(video, 0, frames, analysis)
    assert record == {"name": "model", "model": tiny_blip, "prompt": analysis.caption_prompt}
    assert caption and set(caption.split()) <= set(WORDS[5:])
    assert clip_caption(video, 1, frames, analysis) == (caption, record)  # greedy: the same frame, the same caption
    (tmp_path / "raw.txt").write_text("a rabbit in a meadow\n")
    assert clip_caption(video, 0, frames, analysis) == ("a rabbit in a meadow", {"name": "sidecar", "file": "raw.txt"})
    assert clip_caption(tmp_path / "other.mp4", 0, frames, AnalysisConfig()) == (None, {"name": "none"})
