import pytest
import torch

from megatron_moviegen.data.bundled import CAPTIONS, bundled_clips_dir
from megatron_moviegen.inference.components import load_tae
from megatron_moviegen.models.toy_encoders import TAEVideoEncoder, TinyTextEncoders
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


def test_tae_encode_under_bf16_autocast_stays_within_45_db_of_float32_on_a_real_clip():
    from megatron_moviegen.training.tae_data import read_clip
    from megatron_moviegen.utils.quality import psnr

    tae = load_tae("toy-tae")
    clip = read_clip(bundled_clips_dir() / "bigbuckbunny.mp4", 32, 128)[None]  # (1, 3, 32, 128, 128)
    fp32 = TAEVideoEncoder(tae, dtype="float32").encode(clip)
    bf16 = TAEVideoEncoder(tae, dtype="bfloat16").encode(clip)
    assert fp32.shape == bf16.shape == (1, 16, 4, 16, 16) and bf16.dtype == torch.float32
    # Measured 56.4 dB over the float32 latents' range (toy-tae, untrained); bf16 keeps 8 bits of mantissa.
    quality = psnr(bf16, fp32, data_range=(fp32.max() - fp32.min()).item())
    assert 45.0 < quality < 100.0, quality  # < 100: the encode did run in bf16
    assert torch.equal(TAEVideoEncoder(tae).encode(clip), fp32)  # auto on CPU: float32


def test_tae_video_encoder_refuses_an_unknown_dtype():
    with pytest.raises(ValueError, match="got 'fp16'"):
        TAEVideoEncoder(None, dtype="fp16")
