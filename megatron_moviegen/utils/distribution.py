"""Distribution-level video metrics beside PSNR/SSIM: FVD and CLIP score, from networks in local folders.

    fvd = frechet_video_distance(real_videos, generated_videos, "models/videomae-base")      # lower is better
    score = clip_score(generated_videos, captions, "models/clip-vit-large-patch14")         # higher is better

Videos are uint8 (F, H, W, 3), as the evaluation and the video files hold them.

- **FVD** (Unterthiner et al. 2018): the Fréchet distance between Gaussians fitted to video features of the real and
  the generated set, computed by torchmetrics' `FrechetInceptionDistance` (its statistics, its distributed sum and
  its matrix square root) with the Inception network swapped for `VideoFeatures`: a transformers `VideoMAEModel`
  from a local folder (VideoMAE features are what content-debiased FVD recommends over I3D's; cd-fvd itself needs
  torchvision and downloads its weights, which this CPU install cannot). Clips are resampled to the model's
  `num_frames` and `image_size` (centre square), normalised by its processor's mean/std, and the last hidden state is mean-pooled.
  Like FID it needs many videos per side to mean anything (the paper-style number uses thousands); with few
  videos it still ranks sets, and needs at least two per side.
- **CLIP score** (Hessel et al. 2021, as torchmetrics scales it): 100 x max(cos(image, text), 0) between CLIP's image
  and text embeddings, averaged over `frames` evenly spaced frames of each video, then over videos. Computed with
  transformers' `CLIPModel` directly: torchmetrics 1.9's `CLIPScore` refuses a local folder and breaks on
  transformers 5 (whose `get_image_features` returns an output object, not a tensor).

Neither network ships here (offline); tests run the code paths with tiny random-weight models
(`save_tiny_videomae`, and a tiny `CLIPModel`), which checks the plumbing, not the numbers' meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # VideoMAE's processor
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's


def _check_folder(folder: str | Path, what: str) -> Path:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{what}: {folder} has no config.json; give a local transformers model folder "
                                "(nothing is downloaded)")
    return folder


def check_inputs(videos: int, fvd_model: str | Path | None, clip_model: str | Path | None) -> None:
    """Before any sampling: the model folders exist and FVD has its two videos per set."""
    if fvd_model:
        _check_folder(fvd_model, "FVD video model")
        if videos < 2:
            raise ValueError(f"FVD needs at least 2 videos per set (a covariance), the manifest has {videos}")
    if clip_model:
        _check_folder(clip_model, "CLIP score model")


def _normalisation(folder: Path, default: tuple[tuple, tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (3, 1, 1) from the folder's preprocessor_config.json, else `default`."""
    path = folder / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    mean, std = config.get("image_mean", default[0]), config.get("image_std", default[1])
    return torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), torch.tensor(std, dtype=torch.float32).view(3, 1, 1)


def _frames_chw(video: torch.Tensor, count: int, size: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (count, 3, size, size) in [0, 1]: `count` evenly spaced frames (repeated when
    the video is shorter), the centre square of each resized to `size`, as the models' processors crop."""
    if video.dtype != torch.uint8 or video.dim() != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
        raise ValueError(f"expected a uint8 video (frames, height, width, 3), got {video.dtype} {tuple(video.shape)}")
    frames, height, width, _ = video.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    picks = torch.linspace(0, frames - 1, count).round().long()
    square = video[picks, top:top + side, left:left + side].permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


class VideoFeatures(torch.nn.Module):
    """A VideoMAE encoder from a local folder as torchmetrics' feature extractor: `prepare`d clips (B, frames, 3,
    size, size) in [0, 1] -> (B, hidden) float, the mean of the last hidden state over tokens. `num_features` is
    what torchmetrics reads."""

    def __init__(self, folder: str | Path):
        super().__init__()
        from transformers import VideoMAEModel

        folder = _check_folder(folder, "FVD video model")
        self.model = VideoMAEModel.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)
        self.frames, self.size = self.model.config.num_frames, self.model.config.image_size
        self.num_features = self.model.config.hidden_size
        mean, std = _normalisation(folder, (IMAGENET_MEAN, IMAGENET_STD))
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def prepare(self, video: torch.Tensor) -> torch.Tensor:
        """uint8 (F, H, W, 3) -> (frames, 3, size, size) in [0, 1], this model's input size."""
        return _frames_chw(video, self.frames, self.size)

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=(clips - self.mean) / self.std).last_hidden_state.mean(dim=1)


def frechet_video_distance(real: Sequence[torch.Tensor], generated: Sequence[torch.Tensor], folder: str | Path,
                           batch_size: int = 8) -> float:
    """FVD between two sets of uint8 (F, H, W, 3) videos (any lengths and sizes), with the VideoMAE in `folder`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(generated) < 2:
        raise ValueError(f"FVD needs at least 2 videos per set (a covariance), got {len(real)} real and "
                         f"{len(generated)} generated")
    features = VideoFeatures(folder)
    metric = FrechetInceptionDistance(feature=features, reset_real_features=False)
    for videos, is_real in ((real, True), (generated, False)):
        for start in range(0, len(videos), batch_size):
            metric.update(torch.stack([features.prepare(v) for v in videos[start:start + batch_size]]), real=is_real)
    return float(metric.compute())


def clip_score(videos: Sequence[torch.Tensor], captions: Sequence[str], folder: str | Path, frames: int = 4) -> float:
    """Mean CLIP score of uint8 (F, H, W, 3) `videos` against their `captions` with the CLIPModel in `folder`."""
    return float((100 * clip_cosines(videos, captions, folder, frames).clamp(min=0)).mean())


@torch.no_grad()
def clip_cosines(videos: Sequence[torch.Tensor], captions: Sequence[str], folder: str | Path,
                 frames: int = 4) -> torch.Tensor:
    """(videos, frames) cosine similarities between CLIP embeddings of `frames` evenly spaced frames of each video
    and of its caption."""
    from transformers import AutoTokenizer, CLIPModel

    if len(videos) != len(captions) or not videos:
        raise ValueError(f"clip_score: {len(videos)} videos and {len(captions)} captions; need as many, at least one")
    folder = _check_folder(folder, "CLIP score model")
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    size, length = model.config.vision_config.image_size, model.config.text_config.max_position_embeddings
    mean, std = _normalisation(folder, (CLIP_MEAN, CLIP_STD))
    rows = []
    for video, caption in zip(videos, captions):
        image = _embedding(model.get_image_features(pixel_values=(_frames_chw(video, frames, size) - mean) / std))
        tokens = tokenizer([caption], padding=True, truncation=True, max_length=length, return_tensors="pt")
        rows.append((image @ _embedding(model.get_text_features(**tokens)).T).squeeze(-1))
    return torch.stack(rows)


def _embedding(output) -> torch.Tensor:
    """Unit-norm embeddings from `get_*_features` (a tensor before transformers 5, an output object after)."""
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return features / features.norm(dim=-1, keepdim=True)


def save_tiny_videomae(folder: str | Path, seed: int = 0) -> Path:
    """A random-weight VideoMAE (4 frames of 32 px, width 32) in `folder`, for tests of the FVD code path."""
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(seed)
    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    VideoMAEModel(config).save_pretrained(folder)
    return Path(folder)
