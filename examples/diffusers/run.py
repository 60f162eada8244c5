"""What a diffusers user runs on a Movie Gen export, unchanged: plain diffusers calls, nothing from megatron_moviegen
imported here (it must be installed: `pip install -e ".[hf]"`).

    python examples/diffusers/run.py PIPELINE_FOLDER [LORA_FOLDER] [OUT_FOLDER]

Loads the pipeline with DiffusionPipeline in bf16, optionally a LoRA, samples two videos per prompt with a step
callback, and writes each as an .mp4 with diffusers.utils.export_to_video.
"""

import sys
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import export_to_video

pipeline_folder = sys.argv[1]
lora_folder = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] else None
out = Path(sys.argv[3] if len(sys.argv) > 3 else "outputs/diffusers/videos")

# trust_remote_code: the folder's pipeline.py names MovieGenVideoPipeline (imported from the installed package).
pipe = DiffusionPipeline.from_pretrained(pipeline_folder, dtype=torch.bfloat16, trust_remote_code=True)
print(f"loaded {type(pipe).__name__}: transformer {pipe.transformer.dtype}, scheduler {type(pipe.scheduler).__name__}")
pipe.set_progress_bar_config(disable=True)  # the callback reports progress
if lora_folder:
    pipe.load_lora_weights(lora_folder)
    print(f"LoRA loaded from {lora_folder}: adapters {pipe.transformer.active_adapters()}")


def on_step_end(pipe, step, timestep, tensors):
    latents = tensors["latents"]
    if (step + 1) % 5 == 0:
        print(f"  step {step + 1}/{pipe.num_timesteps}  timestep {float(timestep):7.2f}  latents "
              f"{tuple(latents.shape)} std {latents.float().std().item():.3f}")
    return {}


prompts = ["a big white rabbit in a green meadow", "a man talking on a phone in a car"]
start = time.time()
result = pipe(prompt=prompts, negative_prompt="blurry, low quality", num_videos_per_prompt=2,
              height=64, width=64, num_frames=32, fps=16, num_inference_steps=20, guidance_scale=7.5,
              generator=torch.Generator().manual_seed(0), output_type="pil", callback_on_step_end=on_step_end)
print(f"sampled {len(result.frames)} videos in {time.time() - start:.1f} s")
out.mkdir(parents=True, exist_ok=True)
for index, frames in enumerate(result.frames):
    path = export_to_video(frames, str(out / f"video_{index}.mp4"), fps=16)
    print(f"  {path}: {len(frames)} frames of {frames[0].size[0]}x{frames[0].size[1]} {frames[0].mode}")
