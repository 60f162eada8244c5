"""The spatial upsampler (data.upsample): a video DiT conditioned on the latents of a degraded low-resolution clip.

Sampled by `python -m megatron_moviegen.upsample` (or `generate --upsample` after a t2v export); evaluated as t2v
(the TAE's ceiling on the clips).
"""

from megatron_moviegen.kinds import Kind, register
from megatron_moviegen.kinds.t2v import check_video_recipe, evaluate_t2v

KIND = register(Kind("upsample", "spatial upsampler", "upsample", check_video_recipe, evaluate_t2v,
                     sampled_by="python -m megatron_moviegen.upsample (or generate --upsample)"))
