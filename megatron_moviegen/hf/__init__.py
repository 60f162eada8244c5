"""Movie Gen in Hugging Face diffusers' formats: the DiT, the TAE, the toy text encoder, the sampler and the
text-to-video pipeline. Needs `diffusers` (`pip install -e ".[hf]"`); `tools/export_diffusers.py` writes the
folder, `tools/import_diffusers.py` brings it back into a training checkpoint."""

from megatron_moviegen.hf.autoencoder import MovieGenTAEModel
from megatron_moviegen.hf.pipeline import MovieGenPipelineOutput, MovieGenVideoPipeline
from megatron_moviegen.hf.scheduler import MovieGenFlowEulerScheduler
from megatron_moviegen.hf.text_encoder import MovieGenByteTextEncoder
from megatron_moviegen.hf.transformer import MovieGenTransformer3DModel

__all__ = ["MovieGenByteTextEncoder", "MovieGenFlowEulerScheduler", "MovieGenPipelineOutput", "MovieGenTAEModel",
           "MovieGenTransformer3DModel", "MovieGenVideoPipeline"]
