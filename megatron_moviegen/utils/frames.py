"""The geometry of fitting a frame to a size: resize to cover it, then crop; shared by decoding (data/decode.py)
and the CLIP towers' pixels (models/vision_tower.py), so a frame gets the same crop on both paths."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cover_size(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[int, int]:
    """The smallest (h, w) with the source's aspect ratio that covers (dst_h, dst_w)."""
    scale = max(dst_h / src_h, dst_w / src_w)
    return max(dst_h, round(src_h * scale)), max(dst_w, round(src_w * scale))


def crop_offsets(h: int, w: int, dst_h: int, dst_w: int, top: float = 0.5, left: float = 0.5) -> tuple[int, int]:
    """(top, left) pixel offset of a (dst_h, dst_w) crop at relative position (top, left) in [0, 1]; 0.5 is the
    centre crop pre-encoding takes."""
    return int((h - dst_h) * top), int((w - dst_w) * left)


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(t, h, w, 3) uint8 on any device -> (t, height, width, 3) uint8; antialiased bilinear, then crop."""
    t, h, w, _ = frames.shape
    cover_h, cover_w = cover_size(h, w, height, width)
    x = frames.permute(0, 3, 1, 2).float()  # (t, 3, h, w)
    if (cover_h, cover_w) != (h, w):
        x = F.interpolate(x, size=(cover_h, cover_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = crop_offsets(cover_h, cover_w, height, width)
    x = x[:, :, top : top + height, left : left + width].round_().clamp_(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1)  # (t, h, w, 3)
