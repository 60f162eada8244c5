import torch

from megatron_moviegen.data.bundled import CAPTIONS
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.recipes import load_config
from megatron_moviegen.text.prompts import conditioning_prompt


def test_tiny_encoders_tell_bundled_captions_apart_after_the_fps_prefix():
    encoders = TinyTextEncoders.for_model(load_config("quickstart").model)
    prompts = [conditioning_prompt(CAPTIONS[name], 25) for name in ("carphone_pristine.mp4", "bigbuckbunny.mp4")]
    tokens = encoders.encode(prompts)
    for name in ("ul2", "metaclip"):
        embeddings, mask = tokens[name]
        assert mask[0].sum() == len(prompts[0].encode()) and mask[1].sum() == len(prompts[1].encode())
        assert not torch.allclose(embeddings[0], embeddings[1])


def test_tiny_byt5_reads_only_the_quoted_text_like_the_real_one():
    encoders = TinyTextEncoders.for_model(load_config("tiny").model)
    tokens = encoders.encode(["FPS-16 a man talking", 'FPS-16 a sign reading "hello"', 'FPS-24 a door, "hello"'])
    embeddings, mask = tokens["byt5"]
    assert mask[0].sum() == 0 and torch.count_nonzero(embeddings[0]) == 0  # nothing quoted, nothing seen
    assert mask[1].sum() == len('"hello"')
    assert torch.equal(embeddings[1], embeddings[2])  # the FPS prefix and unquoted words are not ByT5's input
