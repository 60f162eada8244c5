"""Generation: the sampling pipeline (text -> DiT -> Euler + CFG -> TAE decode -> files)."""

from megatron_moviegen.inference.pipeline import MovieGenPipeline, SamplingConfig

__all__ = ["MovieGenPipeline", "SamplingConfig"]
