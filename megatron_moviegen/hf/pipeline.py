"""Text-to-video as a diffusers `DiffusionPipeline`: the folder `tools/export_diffusers.py` writes loads with

    from megatron_moviegen.hf import MovieGenVideoPipeline
    pipe = MovieGenVideoPipeline.from_pretrained("out")                      # or a Hub id
    frames = pipe("a corgi surfing", num_frames=16, height=64, width=64, fps=8, num_inference_steps=8,
                  generator=torch.Generator().manual_seed(0)).frames[0]  # (t, h, w, 3) float in [0, 1]

and samples as `megatron_moviegen.generate` does: the FPS-n prompt rule, the three text encoders (ByT5 on the quoted
text only), Euler on the linear-quadratic schedule with classifier-free guidance (the unconditional branch sees no
text), the TAE's tiled decode. With the same export, seed and settings it gives the same frames (test:
tests/hf/test_pipeline.py). Noise is drawn whole from `generator` on its device, as `generate` draws it on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.diffusion import classifier_free_guidance
from megatron_moviegen.hf.autoencoder import MovieGenTAEModel
from megatron_moviegen.hf.scheduler import MovieGenFlowEulerScheduler
from megatron_moviegen.hf.transformer import MovieGenTransformer3DModel
from megatron_moviegen.inference.pipeline import SamplingConfig, check_prompts, decode_latents, latent_shape
from megatron_moviegen.text.encoders import _TEXT_FNS, FrozenTextEncoder
from megatron_moviegen.text.prompts import conditioning_prompt

TEXT_COMPONENTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))


@dataclass
class MovieGenPipelineOutput(BaseOutput):
    frames: Union[np.ndarray, torch.Tensor]  # (b, t, h, w, 3) in [0, 1]; or latents (b, 16, T, h', w')


class MovieGenVideoPipeline(DiffusionPipeline):
    """Components: the transformer, the TAE (`vae`), the scheduler, and one text encoder per entry of
    `transformer.config.text_encoders`, in that order (`text_encoder`, `text_encoder_2`, `text_encoder_3`, each with
    its tokenizer; a `MovieGenByteTextEncoder` needs none)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"]

    def __init__(self, transformer: MovieGenTransformer3DModel, vae: MovieGenTAEModel,
                 scheduler: MovieGenFlowEulerScheduler, text_encoder, tokenizer=None, text_encoder_2=None,
                 tokenizer_2=None, text_encoder_3=None, tokenizer_3=None):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                              text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)

    # ---- text --------------------------------------------------------------------------------------------
    def text_encoders(self) -> dict[str, tuple[object, object, int]]:
        """{source name: (encoder, tokenizer, max_length)} in the transformer's context order."""
        sources = self.transformer.config.text_encoders
        if len(sources) > len(TEXT_COMPONENTS):
            raise ValueError(f"the transformer has {len(sources)} text encoders; this pipeline holds at most "
                             f"{len(TEXT_COMPONENTS)}")
        out = {}
        for (name, _, max_length), (encoder_name, tokenizer_name) in zip(sources, TEXT_COMPONENTS):
            encoder = getattr(self, encoder_name)
            if encoder is None:
                raise ValueError(f"component {encoder_name} (text encoder {name!r}) is missing")
            out[name] = (encoder, getattr(self, tokenizer_name), max_length)
        return out

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> dict[str, Tokens]:
        """Prompts (FPS rule applied) -> {source: Tokens((b, max_length, width), (b, max_length) bool)}."""
        tokens = {}
        for name, (encoder, tokenizer, max_length) in self.text_encoders().items():
            if tokenizer is None:
                tokens[name] = encoder.encode(prompts)
            else:
                frozen = FrozenTextEncoder(name, tokenizer, encoder, max_length, _TEXT_FNS[name])
                tokens[name] = Tokens(*frozen.encode_batch(prompts))
        return tokens

    # ---- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: Union[str, list[str]], negative_prompt: Optional[str] = None, num_frames: int = 256,
                 height: int = 768, width: int = 768, fps: int = 16, num_inference_steps: int = 50,
                 guidance_scale: float = 7.5, generator: Optional[torch.Generator] = None,
                 latents: Optional[torch.Tensor] = None, output_type: str = "np", return_dict: bool = True):
        """prompt(s) -> MovieGenPipelineOutput(frames): "np" (b, t, h, w, 3) float32 numpy in [0, 1], "pt" the same as
        a tensor, "latent" the DiT's latents. `negative_prompt` None: the unconditional branch sees no text."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        settings = SamplingConfig(num_frames=num_frames, height=height, width=width, fps=fps,
                                  steps=num_inference_steps, guidance_scale=guidance_scale,
                                  negative_prompt=negative_prompt)
        settings.validate()
        check_prompts(prompts)
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type: got {output_type!r}, expected 'np', 'pt' or 'latent'")
        device = self._execution_device
        dtype = self.transformer.dtype
        rule = None if num_frames == 1 else fps
        cond = self.encode_prompt([conditioning_prompt(p, rule) for p in prompts])
        if negative_prompt is None:
            uncond = {name: Tokens(t.embeddings, torch.zeros_like(t.mask)) for name, t in cond.items()}
        else:
            uncond = self.encode_prompt([conditioning_prompt(negative_prompt, rule)] * len(prompts))
        both = [{"embeddings": {name: t.embeddings.to(device, dtype) for name, t in c.items()},
                 "masks": {name: t.mask.to(device) for name, t in c.items()}} for c in (cond, uncond)]

        shape = latent_shape(self.vae, self.transformer.dit_config, len(prompts), num_frames, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=generator.device if generator else device,
                                   dtype=torch.float32)
        latents = latents.to(device, torch.float32)

        def velocity(x: torch.Tensor, t: float, conditioning) -> torch.Tensor:
            timesteps = torch.full((x.shape[0],), t, dtype=torch.float32, device=device)
            return self.transformer(x.to(dtype), timesteps, conditioning["embeddings"],
                                    conditioning["masks"]).sample.float()

        guided = classifier_free_guidance(velocity, *both, guidance_scale)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps[:-1].tolist()):
            latents = self.scheduler.step(guided(latents, t), t, latents).prev_sample

        if output_type == "latent":
            frames = latents
        else:
            pixels = decode_latents(self.vae, latents, num_frames)  # (b, 3, t, h, w) in [-1, 1]
            frames = ((pixels + 1.0) / 2.0).permute(0, 2, 3, 4, 1).cpu()  # (b, t, h, w, 3) in [0, 1]
            frames = frames.numpy() if output_type == "np" else frames
        self.maybe_free_model_hooks()
        return MovieGenPipelineOutput(frames=frames) if return_dict else (frames,)
