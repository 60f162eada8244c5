"""Video data: decode -> bucket -> pre-encode to latent shards -> training loader.

    decode.py     probe files, sample a clip at an fps, resize + center-crop (PyAV, DALI GPU/CPU)
    buckets.py    aspect-ratio x duration buckets; nearest bucket per sample, or a reason to reject it
    manifest.py   JSONL / CSV / folder-with-captions input
    encoders.py   the VideoEncoder / TextEncoder protocols pre-encoding needs, and tiny test encoders
    shards.py     the WebDataset shard format and energon's .nv-meta description
    preencode.py  resumable, multi-process pre-encoding into shards
    loader.py     bucket-homogeneous, resumable batches from the shards
"""

from megatron_moviegen.data.config import BucketConfig, DataConfig

__all__ = ["BucketConfig", "DataConfig"]
