"""Text-to-video as a diffusers `DiffusionPipeline`, with the call signature of diffusers' video pipelines (Wan's):

    pipe = DiffusionPipeline.from_pretrained("out", dtype=torch.bfloat16, trust_remote_code=True)
    video = pipe("a corgi surfing", num_frames=16, height=64, width=64, num_inference_steps=8,
                 num_videos_per_prompt=2, generator=torch.Generator().manual_seed(0)).frames[0]  # PIL frames

and samples as `megatron_moviegen.generate` does: the FPS-n prompt rule (`fps`), the three text encoders (ByT5 on the
quoted text only), Euler on the linear-quadratic schedule with classifier-free guidance (no negative prompt: the
unconditional branch sees no text), the TAE's tiled decode. With the same export, seed and settings it gives the same
latents bit for bit (tests/hf). Noise is drawn whole from one `generator` on its device, as `generate` draws it on the
CPU; a list of generators draws sample by sample (diffusers' `randn_tensor`).

Prompt embeddings are what `encode_prompt` returns: {encoder name: Tokens((b, n, width), (b, n) bool mask)}, one entry
per text encoder of the transformer (the DiT reads several encoders, so they are not one tensor).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.loaders import Mochi1LoraLoaderMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.diffusion import classifier_free_guidance
from megatron_moviegen.hf.autoencoder import MovieGenTAEModel
from megatron_moviegen.hf.scheduler import MovieGenFlowEulerScheduler, flow_match_sigmas
from megatron_moviegen.hf.transformer import MovieGenTransformer3DModel
from megatron_moviegen.inference.pipeline import SamplingConfig, check_prompts, latent_shape
from megatron_moviegen.text.encoders import _TEXT_FNS, FrozenTextEncoder
from megatron_moviegen.text.prompts import conditioning_prompt

TEXT_COMPONENTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))
PromptEmbeds = dict[str, Tokens]


@dataclass
class MovieGenPipelineOutput(BaseOutput):
    """frames: "pil" a list (per video) of lists of PIL images; "np" (b, t, h, w, 3) float32 in [0, 1]; "pt"
    (b, t, 3, h, w) in [0, 1] (diffusers' VideoProcessor layouts); "latent" the DiT's latents (b, 16, T, h', w')."""

    frames: Union[list[list[PIL.Image.Image]], np.ndarray, torch.Tensor]


class MovieGenVideoPipeline(DiffusionPipeline, Mochi1LoraLoaderMixin):
    """Components: the transformer, the TAE (`vae`), the scheduler, and one text encoder per entry of
    `transformer.config.text_encoders`, in that order (`text_encoder`, `text_encoder_2`, `text_encoder_3`, each with
    its tokenizer; a `MovieGenByteTextEncoder` needs none). `load_lora_weights` (peft installed) takes diffusers'
    transformer-only LoRA files, as hf/lora.py writes them (diffusers' Mochi loader is that generic loader: LoRA
    on `transformer`, no key conversion)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components = ["tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(self, transformer: MovieGenTransformer3DModel, vae: MovieGenTAEModel,
                 scheduler: MovieGenFlowEulerScheduler, text_encoder, tokenizer=None, text_encoder_2=None,
                 tokenizer_2=None, text_encoder_3=None, tokenizer_3=None):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                              tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                              text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.video_processor = VideoProcessor(vae_scale_factor=vae.cfg.compression)
        self._guidance_scale, self._num_timesteps, self._interrupt = 1.0, 0, False

    @classmethod
    def load_config(cls, *args, **kwargs):
        """model_index.json with `_class_name` ["pipeline", "MovieGenVideoPipeline"] read as the class name: this
        class is already known, so `MovieGenVideoPipeline.from_pretrained` needs no trust_remote_code."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = config["_class_name"][1]
        return loaded

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' save, plus pipeline.py so `DiffusionPipeline.from_pretrained` finds this class again.
        push_to_hub is refused: diffusers would upload before pipeline.py is written."""
        from megatron_moviegen.hf.diffusers_format import name_pipeline_class

        if push_to_hub:
            raise ValueError("save_pretrained(push_to_hub=True): save, then upload the folder with "
                             "huggingface_hub.upload_folder, so that pipeline.py goes with it")
        super().save_pretrained(save_directory, *args, **kwargs)
        name_pipeline_class(save_directory)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """A callback sets `pipe._interrupt = True` to stop sampling after the current step (as in diffusers)."""
        return self._interrupt

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
    def _encode(self, prompts: list[str]) -> PromptEmbeds:
        """Prompts as the encoders read them -> {source: Tokens((b, max_length, width), (b, max_length) bool)}."""
        tokens = {}
        for name, (encoder, tokenizer, max_length) in self.text_encoders().items():
            if tokenizer is None:
                tokens[name] = encoder.encode(prompts)
            else:
                frozen = FrozenTextEncoder(name, tokenizer, encoder, max_length, _TEXT_FNS[name])
                tokens[name] = Tokens(*frozen.encode_batch(prompts))
        return tokens

    def encode_prompt(self, prompt: Union[str, list[str], None], negative_prompt: Union[str, list[str], None] = None,
                      num_videos_per_prompt: int = 1, prompt_embeds: Optional[PromptEmbeds] = None,
                      negative_prompt_embeds: Optional[PromptEmbeds] = None, fps: Optional[int] = 16,
                      ) -> tuple[PromptEmbeds, PromptEmbeds]:
        """Raw prompts (the FPS-`fps` rule applied here; None for an image) or their embeddings -> (cond, uncond)
        embeddings, each prompt repeated `num_videos_per_prompt` times in a row. No negative prompt: the
        unconditional branch is the prompt's embeddings with every mask False (no text, as in training's drop)."""
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            check_prompts(prompts)
            prompt_embeds = self._encode([conditioning_prompt(p, fps) for p in prompts])
        batch = _batch_of(prompt_embeds)
        if negative_prompt_embeds is None:
            if negative_prompt is None:
                negative_prompt_embeds = {name: Tokens(t.embeddings, torch.zeros_like(t.mask))
                                          for name, t in prompt_embeds.items()}
            else:
                negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
                if len(negatives) != batch:
                    raise ValueError(f"negative_prompt: got {len(negatives)} prompts for {batch} prompts; give one "
                                     "string or one per prompt")
                negative_prompt_embeds = self._encode([conditioning_prompt(p, fps) for p in negatives])
        if _batch_of(negative_prompt_embeds) != batch:
            raise ValueError(f"negative_prompt_embeds: batch {_batch_of(negative_prompt_embeds)}, prompt_embeds' is "
                             f"{batch}")
        return (_repeat(prompt_embeds, num_videos_per_prompt), _repeat(negative_prompt_embeds, num_videos_per_prompt))

    # ---- sampling ----------------------------------------------------------------------------------------
    def set_schedule(self, num_inference_steps: int, device: torch.device) -> list[float]:
        """Sets the scheduler's timesteps to the linear-quadratic schedule -> the DiT's flow time of each step.
        Ours keeps the times exactly; another diffusers scheduler that takes sigmas (FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")) gets sigmas = 1 - time."""
        if isinstance(self.scheduler, MovieGenFlowEulerScheduler):
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            return self.scheduler.flow_times.tolist()[:-1]
        if "sigmas" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(f"scheduler {type(self.scheduler).__name__} takes no sigmas in set_timesteps, so it "
                             "cannot follow the linear-quadratic schedule; use MovieGenFlowEulerScheduler or "
                             "FlowMatchEulerDiscreteScheduler")
        self.scheduler.set_timesteps(sigmas=flow_match_sigmas(num_inference_steps), device=device)
        self.scheduler.set_begin_index(0)  # steps counted from the first, not looked up by (repeating) timestep
        return (1.0 - self.scheduler.sigmas[:-1].double()).tolist()

    def prepare_latents(self, shape: tuple[int, ...], generator, latents: Optional[torch.Tensor],
                        device: torch.device) -> torch.Tensor:
        """Noise X_0 (b, 16, T, h, w) float32: `latents` if given, else from `generator` (one: the whole batch on
        its device; a list: one per sample)."""
        if latents is not None:
            if tuple(latents.shape) != tuple(shape):
                raise ValueError(f"latents: got shape {tuple(latents.shape)}, expected {tuple(shape)}")
            return latents.to(device, torch.float32)
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"generator: got a list of {len(generator)}, need one per video ({shape[0]})")
        draw_on = generator.device if isinstance(generator, torch.Generator) else device
        return randn_tensor(shape, generator=generator, device=draw_on, dtype=torch.float32).to(device)

    @torch.no_grad()
    def __call__(self, prompt: Union[str, list[str], None] = None,
                 negative_prompt: Union[str, list[str], None] = None, height: int = 768, width: int = 768,
                 num_frames: int = 256, fps: int = 16, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                 num_videos_per_prompt: int = 1,
                 generator: Union[torch.Generator, list[torch.Generator], None] = None,
                 latents: Optional[torch.Tensor] = None, prompt_embeds: Optional[PromptEmbeds] = None,
                 negative_prompt_embeds: Optional[PromptEmbeds] = None, output_type: str = "np",
                 return_dict: bool = True,
                 callback_on_step_end: Union[Callable, PipelineCallback, MultiPipelineCallbacks, None] = None,
                 callback_on_step_end_tensor_inputs: list[str] = ("latents",)):
        """prompt(s) or prompt_embeds -> MovieGenPipelineOutput(frames) (see there for each `output_type`), or the
        tuple (frames,) when return_dict is False. `callback_on_step_end(pipe, i, t, {name: tensor})` runs after
        each step with the tensors named in `callback_on_step_end_tensor_inputs` and may return replacements."""
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        self.check_inputs(prompt, prompt_embeds, output_type, callback_on_step_end_tensor_inputs)
        SamplingConfig(num_frames=num_frames, height=height, width=width, fps=fps, steps=num_inference_steps,
                       guidance_scale=guidance_scale).validate()
        self._guidance_scale, self._interrupt = guidance_scale, False
        device = self._execution_device
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, negative_prompt, num_videos_per_prompt, prompt_embeds, negative_prompt_embeds,
            None if num_frames == 1 else fps)
        dtype = self.transformer.dtype
        shape = latent_shape(self.vae, self.transformer.dit_config, _batch_of(prompt_embeds), num_frames, height,
                             width)
        latents = self.prepare_latents(shape, generator, latents, device)
        flow_times = self.set_schedule(num_inference_steps, device)
        self._num_timesteps = len(flow_times)

        def velocity(x: torch.Tensor, t: float, conditioning) -> torch.Tensor:
            timesteps = torch.full((x.shape[0],), t, dtype=torch.float32, device=device)
            return self.transformer(x.to(dtype), timesteps, conditioning["embeddings"],
                                    conditioning["masks"]).sample.float()

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                break
            cond, uncond = (_model_inputs(embeds, device, dtype) for embeds in (prompt_embeds, negative_prompt_embeds))
            guided = classifier_free_guidance(velocity, cond, uncond, guidance_scale)
            latents = self.scheduler.step(-guided(latents, flow_times[i]), t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                named = {"latents": latents, "prompt_embeds": prompt_embeds,
                         "negative_prompt_embeds": negative_prompt_embeds}
                outputs = callback_on_step_end(self, i, t, {k: named[k] for k in callback_on_step_end_tensor_inputs})
                latents = outputs.pop("latents", latents)
                prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

        if output_type == "latent":
            frames = latents
        else:
            frames = self.video_processor.postprocess_video(self.vae.decode_video(latents, num_frames), output_type)
        self.maybe_free_model_hooks()
        return MovieGenPipelineOutput(frames=frames) if return_dict else (frames,)

    def check_inputs(self, prompt, prompt_embeds, output_type: str, callback_tensor_inputs) -> None:
        """Exactly one of prompt / prompt_embeds, a known output type and callback tensor names."""
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise ValueError(f"prompt: got {type(prompt).__name__}, expected str or list of str")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type: got {output_type!r}, expected 'pil', 'np', 'pt' or 'latent'")
        unknown = [k for k in callback_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: got {unknown}, expected names in "
                             f"{self._callback_tensor_inputs}")


def _batch_of(embeds: PromptEmbeds) -> int:
    return next(iter(embeds.values())).embeddings.shape[0]


def _repeat(embeds: PromptEmbeds, times: int) -> PromptEmbeds:
    """Each prompt's embeddings `times` times in a row: (b, ...) -> (b * times, ...), as diffusers' pipelines do."""
    return {name: t.map(lambda x: x.repeat_interleave(times, dim=0)) for name, t in embeds.items()}


def _model_inputs(embeds: PromptEmbeds, device: torch.device, dtype: torch.dtype) -> dict:
    """Prompt embeddings -> the transformer's {"embeddings": {name: (b, n, width)}, "masks": {name: (b, n)}}."""
    return {"embeddings": {name: t.embeddings.to(device, dtype) for name, t in embeds.items()},
            "masks": {name: t.mask.to(device) for name, t in embeds.items()}}
