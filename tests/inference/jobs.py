"""Functions run on spawned gloo ranks (tests/harness.py) by the generation tests: a tiny random export, CLI
runs, and sampling under several TP/CP layouts. Each returns plain data; files go under the given folders."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from megatron_moviegen.recipes import load_config
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.generate import generate, main
from megatron_moviegen.checkpoints.export import export_dit, load_exported_dit
from megatron_moviegen.inference import MovieGenPipeline, SamplingConfig
from megatron_moviegen.inference.components import tiny_tae
from megatron_moviegen.parallel.build import build_dit_chunks
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed
from megatron_moviegen.runtime import Runtime
from tests.parallel.dit_parity import randomize_well_conditioned

PROMPT = 'a red ball bouncing on a sign that says "HI"'
SAMPLING = dict(num_frames=16, height=64, width=64, fps=8, steps=4)  # latents (1, 16, 2, 8, 8): 32 tokens
SAMPLING_LAYOUTS = {
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "tp2_sp": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
    "cp2": ["parallel.context_parallel_size=2"],
}


def make_tiny_export(folder: Path, seed: int = 1234, dtype: torch.dtype = torch.bfloat16, recipe: str = "tiny") -> None:
    """The recipe's DiT with well-conditioned random weights (adaLN not zero), exported to `folder` in `dtype`."""
    cfg = load_config(recipe)
    runtime = Runtime.resolve()
    init_model_parallel(cfg.parallel, runtime)
    set_seed(seed, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    randomize_well_conditioned(chunks[0])
    export_dit(chunks, folder, name=f"{recipe}-random", dtype=dtype)


def sample(folder: Path, overrides: list[str]) -> torch.Tensor:
    """Latents sampled from the export under the layout in `overrides`, tiny text encoders, SAMPLING settings."""
    cfg, chunks = load_exported_dit(folder, overrides)
    pipeline = MovieGenPipeline(chunks[0], tiny_tae(), TinyTextEncoders.for_model(cfg.model))
    return pipeline.sample_latents([PROMPT], SamplingConfig(**SAMPLING, seed=5), progress=False)


def single_process_job(rank: int, world_size: int, root: str) -> dict:
    """Export a tiny random DiT to root/export and sample from it on one process (the parity reference)."""
    make_tiny_export(Path(root) / "export")
    latents = sample(Path(root) / "export", [])
    destroy()
    return {"latents": latents}


def layouts_job(rank: int, world_size: int, root: str) -> dict:
    """On 2 ranks: sample under each of SAMPLING_LAYOUTS; re-export from TP=2 and from PP=2 loads."""
    root = Path(root)
    latents = {name: sample(root / "export", overrides) for name, overrides in SAMPLING_LAYOUTS.items()}
    for name, overrides in (("tp2", SAMPLING_LAYOUTS["tp2"]), ("pp2", ["parallel.pipeline_model_parallel_size=2"])):
        _, chunks = load_exported_dit(root / "export", overrides)
        export_dit(chunks, root / f"reexport_{name}")
    destroy()
    return {"latents": latents}


def cli_job(rank: int, world_size: int, root: str) -> dict:
    """`generate` runs on a tiny random export; returns the messages of the errors it must raise, and the exit
    status and stderr of `main` given a model shape the export does not hold."""
    root = Path(root)
    make_tiny_export(root / "export")
    common = ["--checkpoint", str(root / "export"), "--tae", "toy-tae", "--text-encoders", "toy",
              "--height", str(SAMPLING["height"]), "--width", str(SAMPLING["width"]), "--fps", str(SAMPLING["fps"]),
              "--steps", str(SAMPLING["steps"])]
    video = common + ["--frames", str(SAMPLING["num_frames"])]
    generate(video + ["--prompt", PROMPT, "--seed", "3", "--output-dir", str(root / "a")])
    generate(video + ["--prompt", PROMPT, "--seed", "3", "--output-dir", str(root / "b")])
    generate(video + ["--prompt", PROMPT, "--seed", "7", "--output-dir", str(root / "b")])  # beside seed 3's
    (root / "prompts.txt").write_text(f"{PROMPT}\n\nthe sea at night\n")
    generate(video + ["--prompts-file", str(root / "prompts.txt"), "--seed", "4", "--output-dir", str(root / "c")])
    generate(video + ["--prompts-file", str(root / "prompts.txt"), "--seed", "4", "--same-seed",
                      "--output-dir", str(root / "same_seed")])
    generate(common + ["--frames", "1", "--prompt", PROMPT, "--output-dir", str(root / "image")])
    errors = {}
    for name, args in (("too_long", ["--frames", "72"]), ("too_large", ["--frames", "16", "--height", "512"]),
                       ("bad_size", ["--frames", "16", "--height", "72"])):
        try:
            generate(common + args + ["--prompt", PROMPT, "--output-dir", str(root / name)])
        except ValueError as exc:
            errors[name] = str(exc)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(video + ["--prompt", PROMPT, "--output-dir", str(root / "mismatch"), "model.num_layers=2"])
    return {"errors": errors, "mismatch": (status, stderr.getvalue())}
