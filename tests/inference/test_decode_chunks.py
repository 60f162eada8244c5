"""Streamed decoding for `generate`: the chunks decode_chunks yields are the old whole-video decode, cut along time."""

import torch

from megatron_moviegen.inference.components import tiny_tae
from megatron_moviegen.inference.pipeline import decode_chunks, decode_latents

torch.set_num_threads(1)


@torch.no_grad()
def test_streamed_chunks_equal_the_whole_video_decode_exactly():
    tae = tiny_tae().eval()
    latents = torch.randn(1, 16, 7, 2, 2, generator=torch.Generator().manual_seed(0))  # 7 latents: 3 tiles
    num_frames = 53  # not a multiple of 8: the last tile is cut
    whole = tae.decode(tae.denormalize_latents(latents), num_frames=num_frames, tiled=True).float().clamp(-1, 1)
    chunks = list(decode_chunks(tae, latents, num_frames))
    assert len(chunks) > 2 and all(chunk.shape[2] < num_frames for chunk in chunks)
    assert torch.equal(torch.cat(chunks, dim=2), whole)
    assert torch.equal(decode_latents(tae, latents, num_frames), whole)
