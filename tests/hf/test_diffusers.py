"""The diffusers export (megatron_moviegen/hf, checkpoints/diffusers_format.py): the pipeline samples what our
`generate` pipeline samples from the same export and seed, the tensors come back exactly, and the folders load
by Hub id from an offline cache."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_moviegen.checkpoints.diffusers_format import export_diffusers, export_pipeline, from_diffusers, to_diffusers
from megatron_moviegen.checkpoints.export import read_export_tensors
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.hf import MovieGenTAEModel, MovieGenVideoPipeline
from megatron_moviegen.inference.components import load_tae, tiny_tae
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
    torch.testing.assert_close(latents, reference["latents"], rtol=0, atol=1e-5)
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
