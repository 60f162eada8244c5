"""Movie Gen in Hugging Face diffusers' formats: the DiT, the TAE, the toy text encoder, the sampler and the
text-to-video pipeline (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`), LoRA files for
`load_lora_weights`. Needs the [hf] extra (`pip install -e ".[hf]"`); `tools/export_diffusers.py` writes the folder
(diffusers_format.py) and a LoRA run's adapters (lora.py), `tools/import_diffusers.py` brings a folder back into a
training checkpoint."""

from megatron_moviegen.hf.autoencoder import MovieGenTAEModel
from megatron_moviegen.hf.pipeline import MovieGenPipelineOutput, MovieGenVideoPipeline
from megatron_moviegen.hf.scheduler import MovieGenFlowEulerScheduler
from megatron_moviegen.hf.text_encoder import MovieGenByteTextEncoder
from megatron_moviegen.hf.transformer import MovieGenTransformer3DModel

__all__ = ["MovieGenByteTextEncoder", "MovieGenFlowEulerScheduler", "MovieGenPipelineOutput", "MovieGenTAEModel",
           "MovieGenTransformer3DModel", "MovieGenVideoPipeline"]
