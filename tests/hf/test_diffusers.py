"""The diffusers export (megatron_moviegen/hf, hf/diffusers_format.py): the pipeline samples what our
`generate` pipeline samples from the same export and seed, loads through `DiffusionPipeline`, takes diffusers' video
call signature, the tensors come back exactly, and the folders load by Hub id from an offline cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from megatron_moviegen.hf.diffusers_format import (
    export_diffusers,
    export_pipeline,
    from_diffusers,
    to_diffusers,
    transformer_config,
)
from megatron_moviegen.checkpoints.export import read_export_tensors
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.hf import MovieGenTAEModel, MovieGenVideoPipeline
from megatron_moviegen.inference.components import load_tae, tiny_tae
from megatron_moviegen.recipes import load_config
from megatron_moviegen.text import TextEncoders
from megatron_moviegen.text.config import EncoderConfig
from tests.harness import run_distributed
from tests.hf.jobs import exports_job
from tests.inference.jobs import PROMPT, SAMPLING
from tests.text.tiny_models import build_checkpoints, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusers")
    (root / "text").mkdir()
    text = build_checkpoints(root / "text")
    reference = run_distributed(exports_job, world_size=1, args=(str(root), text))[0]
    return root, text, reference


def call(pipe: MovieGenVideoPipeline, output_type: str):
    settings = dict(num_frames=SAMPLING["num_frames"], height=SAMPLING["height"], width=SAMPLING["width"],
                    fps=SAMPLING["fps"], num_inference_steps=SAMPLING["steps"])
    return pipe(PROMPT, **settings, generator=torch.Generator().manual_seed(5), output_type=output_type).frames


def test_the_pipeline_generates_the_frames_generate_does_from_the_same_export_and_seed(runs):
    root, _, reference = runs
    pipe = MovieGenVideoPipeline.from_pretrained(str(root / "hf"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    latents = call(pipe, "latent")
    assert torch.equal(latents, reference["latents"])  # bit for bit
    frames = call(pipe, "np")  # (1, t, h, w, 3) in [0, 1]
    ours = ((reference["pixels"] + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    assert frames.shape == (1, 16, 64, 64, 3)
    assert abs(frames - ours).max() * 255 < 0.5  # the same 8-bit frames


def test_the_pipeline_in_bf16_samples_what_float32_samples_to_within_bf16_rounding(runs):
    root, _, reference = runs
    pipe = MovieGenVideoPipeline.from_pretrained(str(root / "hf"), dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.bfloat16
    latents = call(pipe, "latent").float()
    assert torch.isfinite(latents).all()
    error = ((latents - reference["latents"]).norm() / reference["latents"].norm()).item()
    assert 0 < error < 0.05, f"bf16 latents {error:.3f} from float32 (relative)"  # rounded, not wrong
    frames = call(pipe, "np")  # the bf16 TAE decodes float32 latents on the CPU
    ours = ((reference["pixels"] + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
    assert frames.shape == ours.shape and 0 < abs(frames - ours).mean() < 0.05


def test_the_pipeline_with_the_paper_text_encoders_matches_too(runs):
    root, text, reference = runs
    pipe = MovieGenVideoPipeline.from_pretrained(str(root / "hf_paper"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.text_encoder).__name__ == "T5EncoderModel" and type(pipe.text_encoder_2).__name__ == "CLIPTextModel"
    torch.testing.assert_close(call(pipe, "latent"), reference["paper_latents"], rtol=0, atol=1e-5)
    # Our text encoders read the exported encoders and tokenizers from the pipeline folder's subfolders.
    exported = tiny_config(text, **{name: EncoderConfig(str(root / "hf_paper"), length, subfolder=encoder,
                                                        tokenizer_subfolder=tokenizer)
                                    for name, length, encoder, tokenizer in [
                                        ("ul2", 24, "text_encoder", "tokenizer"),
                                        ("metaclip", 256, "text_encoder_2", "tokenizer_2"),
                                        ("byt5", 32, "text_encoder_3", "tokenizer_3")]})
    prompts = [PROMPT, "a cat"]
    for name, (embeddings, mask) in TextEncoders(exported).encode(prompts).items():
        original = TextEncoders(tiny_config(text)).encode(prompts)[name]
        assert torch.equal(mask, original.mask) and torch.equal(embeddings, original.embeddings), name


def test_tensors_come_back_exactly_through_diffusers_and_a_training_checkpoint(runs):
    root, _, reference = runs
    original = read_export_tensors(root / "export")
    for folder in ("imported", "reexported"):
        back = read_export_tensors(root / folder)
        assert set(back) == set(original)
        assert all(torch.equal(back[name], original[name]) for name in original), folder
    # train.load_from=<the imported checkpoint> starts fine-tuning from exactly these weights (bf16 -> float32).
    start = reference["fine_tune_start"]
    assert set(start) == set(original)
    assert all(torch.equal(start[name], original[name].float()) for name in original)
    hf = {name for name in _safetensors_names(root / "hf" / "transformer")}
    assert "blocks.0.attn1.to_q.weight" in hf and "blocks.3.ff.gate.weight" in hf
    assert not any("linear_qkv" in name or "linear_fc1" in name for name in hf)


def _safetensors_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            names += list(handle.keys())
    return names


def test_fused_megatron_linears_split_per_head_and_fuse_back():
    heads, head_dim, width = 2, 3, 4
    rows = torch.arange(heads * 3 * head_dim, dtype=torch.float32)[:, None].expand(-1, width)  # row r holds r
    split = to_diffusers("layers.7.self_attention.linear_qkv.weight", rows, heads)
    # Head 0 is rows 0-2 (q), 3-5 (k), 6-8 (v); head 1 is rows 9-11 (q), ...
    assert split["blocks.7.attn1.to_q.weight"][:, 0].tolist() == [0, 1, 2, 9, 10, 11]
    assert split["blocks.7.attn1.to_v.weight"][:, 0].tolist() == [6, 7, 8, 15, 16, 17]
    fc1 = to_diffusers("layers.0.mlp.linear_fc1.weight", torch.arange(8.0)[:, None], heads)
    assert fc1["blocks.0.ff.gate.weight"].flatten().tolist() == [0, 1, 2, 3]
    back = from_diffusers({**split, **fc1}, heads)
    assert torch.equal(back["layers.7.self_attention.linear_qkv.weight"], rows)
    assert torch.equal(back["layers.0.mlp.linear_fc1.weight"], torch.arange(8.0)[:, None])


def test_a_model_the_text_to_video_pipeline_cannot_run_is_refused_by_name(runs, tmp_path):
    root, _, _ = runs
    with pytest.raises(ConfigError, match="text-to-video.*model.condition_channels"):
        export_diffusers(root / "edit_export", tmp_path / "out", tiny_tae(), {})
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileExistsError, match="exists; give a new folder"):
        export_pipeline(root / "export", root / "hf", text_encoders="toy")


def test_the_export_tool_refuses_in_one_line(runs, tmp_path):
    root, _, _ = runs
    done = _tool("tools/export_diffusers.py", "--checkpoint", str(root / "edit_export"), "--out",
                 str(tmp_path / "out"), "--tae", "toy-tae", "--text-encoders", "toy")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("export_diffusers: error: the diffusers pipeline is text-to-video")
    assert not (tmp_path / "out").exists()


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_tools_export_a_training_checkpoint_and_import_it_back(runs, tmp_path):
    root, _, _ = runs
    out = tmp_path / "from_ckpt"
    done = _tool("tools/export_diffusers.py", "--checkpoint", str(root / "imported_ckpt"), "--out", str(out),
                 "--tae", "toy-tae", "--text-encoders", "toy")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from_ckpt"]  # no staging folder left
    done = _tool("tools/import_diffusers.py", "--pipeline", str(out), "--out", str(tmp_path / "back"),
                 "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    original = read_export_tensors(root / "export")
    back = read_export_tensors(tmp_path / "back")
    assert all(torch.equal(back[name], original[name]) for name in original)
    assert (tmp_path / "ckpt" / "latest").read_text() == "iter_0000000"


def test_folders_load_by_hub_id_and_subfolder_from_an_offline_cache(runs, tmp_path, monkeypatch):
    root, _, reference = runs
    snapshot = tmp_path / "hub" / "models--acme--moviegen-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(root / "hf", snapshot)
    (tmp_path / "hub" / "models--acme--moviegen-tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--moviegen-tiny" / "refs" / "main").write_text("0" * 40)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tae = load_tae("acme/moviegen-tiny", subfolder="vae")
    expected = tiny_tae().state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in tae.state_dict().items())
    vae = MovieGenTAEModel.from_pretrained("acme/moviegen-tiny", subfolder="vae", cache_dir=str(tmp_path / "hub"),
                                           local_files_only=True)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in vae.state_dict().items())
    pipe = MovieGenVideoPipeline.from_pretrained("acme/moviegen-tiny", cache_dir=str(tmp_path / "hub"),
                                                 local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    torch.testing.assert_close(call(pipe, "latent"), reference["latents"], rtol=0, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="acme/absent.*HF_HUB_OFFLINE=1"):
        load_tae("acme/absent", subfolder="vae")


def test_diffusion_pipeline_finds_the_class_from_the_folder_and_samples_what_generate_does(runs, tmp_path):
    root, _, reference = runs
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers runs a folder's pipeline.py only so
        DiffusionPipeline.from_pretrained(str(root / "hf"))
    pipe = DiffusionPipeline.from_pretrained(str(root / "hf"), dtype=torch.float32, trust_remote_code=True)
    assert type(pipe) is MovieGenVideoPipeline
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(call(pipe, "latent"), MovieGenVideoPipeline.from_pretrained(str(root / "hf")).to(
        torch.float32)(PROMPT, **_settings(), generator=torch.Generator().manual_seed(5), output_type="latent").frames)
    pipe.save_pretrained(str(tmp_path / "saved"))  # a saved pipeline loads the same way
    again = DiffusionPipeline.from_pretrained(str(tmp_path / "saved"), trust_remote_code=True)
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(call(again, "latent"), reference["latents"], rtol=0, atol=1e-5)


def _settings() -> dict:
    return dict(num_frames=SAMPLING["num_frames"], height=SAMPLING["height"], width=SAMPLING["width"],
                fps=SAMPLING["fps"], num_inference_steps=SAMPLING["steps"])


@pytest.fixture(scope="module")
def pipe(runs):
    pipe = MovieGenVideoPipeline.from_pretrained(str(runs[0] / "hf"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_diffusers_video_call_signature_batches_prompts_negatives_generators_and_outputs(pipe, runs):
    _, _, reference = runs
    generators = lambda: [torch.Generator().manual_seed(seed) for seed in (5, 9, 6, 8)]  # noqa: E731
    batch = dict(prompt=[PROMPT, "a cat"], num_videos_per_prompt=2, **_settings())
    latents = pipe(**batch, generator=generators(), output_type="latent").frames
    assert latents.shape == (4, 16, 2, 8, 8)
    torch.testing.assert_close(latents[:1], reference["latents"], rtol=0, atol=1e-5)  # video 0: PROMPT, seed 5
    cond, uncond = pipe.encode_prompt([PROMPT, "a cat"], num_videos_per_prompt=2, fps=SAMPLING["fps"])
    from_embeds = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, **_settings(), generator=generators(),
                       output_type="latent").frames
    torch.testing.assert_close(from_embeds, latents, rtol=0, atol=1e-6)
    negatives = pipe(**batch, negative_prompt=["blurry", "dark"], generator=generators(), output_type="latent").frames
    assert (negatives - latents).abs().max() > 1e-3  # the negative prompts are read
    frames = {kind: pipe(**batch, generator=generators(), output_type=kind).frames for kind in ("pt", "np", "pil")}
    assert frames["pt"].shape == (4, 16, 3, 64, 64) and frames["np"].shape == (4, 16, 64, 64, 3)
    assert torch.equal(frames["pt"].permute(0, 1, 3, 4, 2), torch.from_numpy(frames["np"]))
    assert len(frames["pil"]) == 4 and len(frames["pil"][3]) == 16 and frames["pil"][3][0].size == (64, 64)
    assert (np.asarray(frames["pil"][3][15]) == np.round(frames["np"][3, 15] * 255)).mean() > 0.99
    with pytest.raises(ValueError, match="negative_prompt: got 3 prompts for 2"):
        pipe(**batch, negative_prompt=["a", "b", "c"])
    with pytest.raises(ValueError, match="generator: got a list of 2, need one per video \\(4\\)"):
        pipe(**batch, generator=generators()[:2])


def test_callbacks_see_every_step_and_may_replace_the_latents(pipe):
    seen = []

    def on_step(p, i, t, tensors):
        seen.append((i, float(t), sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])} if i == SAMPLING["steps"] - 1 else {}

    out = pipe(PROMPT, **_settings(), output_type="latent", callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], return_dict=False)
    assert [i for i, _, _ in seen] == list(range(SAMPLING["steps"])) and seen[0][1] == 1000.0
    assert seen[0][2] == ["latents", "prompt_embeds"] and not out[0].any()
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs: got \\['noise'\\]"):
        pipe(PROMPT, **_settings(), callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["noise"])


def test_the_stock_flow_match_scheduler_shipped_beside_ours_reproduces_our_sampler(pipe, runs):
    steps = dict(_settings(), num_inference_steps=20)
    ours = pipe(PROMPT, **steps, generator=torch.Generator().manual_seed(5), output_type="latent").frames
    stock = FlowMatchEulerDiscreteScheduler.from_pretrained(str(runs[0] / "hf"), subfolder="flow_match_scheduler")
    swapped = MovieGenVideoPipeline(**{**pipe.components, "scheduler": stock})
    swapped.set_progress_bar_config(disable=True)
    theirs = swapped(PROMPT, **steps, generator=torch.Generator().manual_seed(5), output_type="latent").frames
    error = (theirs - ours).abs().max().item()
    assert 0 < error < 1e-5, error  # float32 sigmas against our float64 times: 20 steps differ by ~1e-6


def test_vae_tiling_slicing_offload_and_attention_backend_switches(pipe):
    latents = pipe([PROMPT, "a cat"], **_settings(), generator=torch.Generator().manual_seed(5),
                   output_type="latent").frames
    vae, frames = pipe.vae, SAMPLING["num_frames"]
    tiled = vae.decode_video(latents, frames)  # the default, as generate decodes
    vae.enable_slicing()
    assert torch.allclose(vae.decode_video(latents, frames), tiled, atol=1e-5)  # batch-size rounding (2e-6)
    vae.disable_slicing()
    vae.disable_tiling()
    assert torch.allclose(vae.decode_video(latents, frames), tiled, atol=1e-6)  # one tile holds this video
    vae.enable_tiling(spatial_tile_size=32, spatial_tile_overlap=16)  # 4 overlapping tiles a frame
    small_tiles = vae.decode_video(latents, frames)
    assert (small_tiles - tiled).abs().max() > 1e-2 and small_tiles.abs().max() <= 1  # other tiles, blended
    with pytest.raises(ConfigError, match="enable_tiling: got \\['tile'\\]"):
        vae.enable_tiling(tile=3)
    vae.enable_tiling(spatial_tile_size=256, spatial_tile_overlap=64)
    pipe.transformer.set_attention_backend("_native_math")  # torch's math kernel for self-attention
    math_kernel = pipe([PROMPT, "a cat"], **_settings(), generator=torch.Generator().manual_seed(5),
                       output_type="latent").frames
    pipe.transformer.reset_attention_backend()
    assert 0 < (math_kernel - latents).abs().max() < 1e-4  # another kernel, the same attention
    with pytest.raises(RuntimeError, match="Flash Attention backend 'flash' is not usable"):  # no flash-attn here
        pipe.transformer.set_attention_backend("flash")
    with pytest.raises(ValueError, match="'fastest' is not a valid AttentionBackendName"):
        pipe.transformer.set_attention_backend("fastest")
    offloaded = MovieGenVideoPipeline(**pipe.components)
    offloaded.enable_model_cpu_offload(device="cpu")
    offloaded.set_progress_bar_config(disable=True)
    assert torch.equal(offloaded([PROMPT, "a cat"], **_settings(), generator=torch.Generator().manual_seed(5),
                                 output_type="latent").frames, latents)


def test_lora_adapters_load_with_load_lora_weights_and_sample_what_the_merged_model_does(runs):
    root, _, reference = runs
    pipe = DiffusionPipeline.from_pretrained(str(root / "hf"), dtype=torch.float32, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(root / "lora"))
    adapted = call(pipe, "latent")
    assert (adapted - reference["latents"]).abs().max() > 0.1  # the adapters change the samples
    torch.testing.assert_close(adapted, reference["lora_latents"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("recipe, kind", [
    ("edit_tiny", "a video-editing model"), ("upsampler_tiny", "a spatial upsampler"),
    ("pt2v_tiny", "a personalized \\(PT2V\\) model"), ("audio_tiny", "an audio model")])
def test_editing_upsampler_pt2v_and_audio_models_are_refused_by_kind(recipe, kind):
    with pytest.raises(ConfigError, match=f"text-to-video; this is {kind} "):
        transformer_config(load_config(recipe, []).model)


def test_a_higher_order_flow_solver_swaps_in_and_one_without_sigmas_is_refused(pipe):
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    def sample(scheduler, steps):
        swapped = MovieGenVideoPipeline(**{**pipe.components, "scheduler": scheduler})
        swapped.set_progress_bar_config(disable=True)
        return swapped(PROMPT, **dict(_settings(), num_inference_steps=steps), output_type="latent",
                       generator=torch.Generator().manual_seed(5)).frames

    reference = sample(pipe.scheduler, 128)
    euler = (sample(pipe.scheduler, 16) - reference).abs().max()
    unipc = UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    assert (sample(unipc, 16) - reference).abs().max() < 0.7 * euler  # nearer the converged sample in 16 steps
    with pytest.raises(ValueError, match="scheduler DDIMScheduler takes no sigmas"):
        sample(DDIMScheduler(), 4)
