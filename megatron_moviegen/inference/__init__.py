"""Generation: the exported DiT (load under any layout / export from any layout) and the sampling pipeline."""

from megatron_moviegen.inference.export import export_dit, load_exported_dit, read_exported_config
from megatron_moviegen.inference.pipeline import MovieGenPipeline, SamplingConfig

__all__ = ["MovieGenPipeline", "SamplingConfig", "export_dit", "load_exported_dit", "read_exported_config"]
