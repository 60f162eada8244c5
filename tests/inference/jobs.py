"""Functions run on spawned gloo ranks (tests/harness.py) by the generation tests: a tiny random export, CLI
runs, and sampling under several TP/CP layouts. Each returns plain data; files go under the given folders."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

from megatron_moviegen.recipes import load_config
from megatron_moviegen.models.toy_encoders import TinyTextEncoders
from megatron_moviegen.generate import generate, main
from megatron_moviegen.checkpoints.export import export_dit, load_exported_dit
from megatron_moviegen.inference import MovieGenPipeline, SamplingConfig
from megatron_moviegen.inference.components import tiny_tae
from megatron_moviegen.kinds import kind_of
from megatron_moviegen.models.dit_chunks import build_dit_chunks
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed
from megatron_moviegen.runtime import Runtime
from tests.parallel.dit_parity import randomize_well_conditioned

def read_frames(path: Path):
    """Every frame of a written video: (t, h, w, 3) uint8 numpy."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def written(folder: Path, stem: str, suffix: str = ".mp4") -> Path:
    """The one file `<stem>-<8 hex digits><suffix>` in `folder` (generated names end in a hash of their sidecar)."""
    pattern = re.escape(stem) + r"-[0-9a-f]{8}" + re.escape(suffix)
    found = [path for path in Path(folder).iterdir() if re.fullmatch(pattern, path.name)]
    assert len(found) == 1, f"{folder}: need one {stem}-<hash>{suffix}, got {sorted(p.name for p in found)}"
    return found[0]


PROMPT = 'a red ball bouncing on a sign that says "HI"'
SAMPLING = dict(num_frames=16, height=64, width=64, fps=8, steps=4)  # latents (1, 16, 2, 8, 8): 32 tokens
LONG_PROMPT = "a red ball bouncing slowly across a wooden table in the kitchen"  # its words pass 48 characters
NAMING_RUNS = [("cat", "2"), ("CAT!!", "2"), ("cat", "3"), (LONG_PROMPT + " at dawn", "2"),
               (LONG_PROMPT + " at dusk", "2"), ("cat", "2")]  # (prompt, --steps) into one folder, one seed
SAMPLING_LAYOUTS = {
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "tp2_sp": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
    "cp2": ["parallel.context_parallel_size=2"],
}


def make_tiny_export(folder: Path, seed: int = 1234, dtype: torch.dtype = torch.bfloat16, recipe: str = "tiny",
                     overrides: tuple[str, ...] = ()) -> None:
    """The recipe's DiT with well-conditioned random weights (adaLN not zero), exported to `folder` in `dtype`
    (one process: the recipe's layout is reset to TP=CP=PP=1)."""
    cfg = load_config(recipe, ["parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false",
                               *overrides])
    runtime = Runtime.resolve()
    init_model_parallel(cfg.parallel, runtime)
    set_seed(seed, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    randomize_well_conditioned(chunks[0])
    export_dit(chunks, folder, name=f"{recipe}-random", dtype=dtype, data=cfg.data, kind=kind_of(cfg).name)


INSTRUCTION = "make it black and white"
EDIT_SOURCE = dict(fps=8, frames=16, height=64, width=64)  # a real clip's first 2 s: latents (1, 16, 2, 8, 8)


def edit_source_pixels() -> torch.Tensor:
    """The bundled carphone clip as an edit's source: (1, 3, 16, 64, 64) in [-1, 1]."""
    from megatron_moviegen.data.bundled import bundled_clips_dir
    from megatron_moviegen.upsample import read_video

    return read_video(str(bundled_clips_dir() / "carphone_pristine.mp4"), 0.0, EDIT_SOURCE["fps"],
                      EDIT_SOURCE["frames"], EDIT_SOURCE["height"], EDIT_SOURCE["width"])


def sample_edit(folder: Path, overrides: list[str], **settings) -> torch.Tensor:
    """Edited latents of edit_source_pixels() by INSTRUCTION through the edit export, under `overrides`' layout."""
    from megatron_moviegen.inference.editor import EditingConfig, VideoEditor

    cfg, chunks = load_exported_dit(folder, overrides)
    editor = VideoEditor(chunks[0], tiny_tae(), TinyTextEncoders.for_model(cfg.model), cfg.data.edit)
    source = editor.source_latents(edit_source_pixels())
    return editor.sample_latents(source, INSTRUCTION, EditingConfig(steps=3, seed=5, fps=EDIT_SOURCE["fps"],
                                                                    **settings))


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
    make_tiny_export(Path(root) / "edit_export", recipe="edit_tiny")
    edit = sample_edit(Path(root) / "edit_export", [])
    destroy()
    return {"latents": latents, "edit_latents": edit}


def layouts_job(rank: int, world_size: int, root: str) -> dict:
    """On 2 ranks: sample under each of SAMPLING_LAYOUTS; re-export from TP=2 and from PP=2 loads."""
    root = Path(root)
    latents = {name: sample(root / "export", overrides) for name, overrides in SAMPLING_LAYOUTS.items()}
    latents["edit_tp2_sp"] = sample_edit(root / "edit_export", SAMPLING_LAYOUTS["tp2_sp"])
    for name, overrides in (("tp2", SAMPLING_LAYOUTS["tp2"]), ("pp2", ["parallel.pipeline_model_parallel_size=2"])):
        cfg, chunks = load_exported_dit(root / "export", overrides)
        export_dit(chunks, root / f"reexport_{name}", data=cfg.data)
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
    named = [generate(common + ["--frames", "1", "--prompt", prompt, "--steps", steps, "--output-dir",
                                str(root / "names")])[0].name for prompt, steps in NAMING_RUNS]
    from megatron_moviegen.text.rewrite import PromptRewriter, save_tiny_rewriter

    rewriter = save_tiny_rewriter(root / "rewriter")
    generate(video + ["--prompt", PROMPT, "--rewrite-prompt", str(rewriter), "--output-dir", str(root / "rewritten")])
    rewritten = PromptRewriter(str(rewriter)).rewrite(PROMPT)
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
    return {"errors": errors, "mismatch": (status, stderr.getvalue()), "named": named, "rewritten": rewritten}


def edit_cli_job(rank: int, world_size: int, root: str) -> dict:
    """`generate --edit-video` on a tiny random edit export and the bundled carphone clip: two runs with one seed,
    one with another task, an image source; the exit status and stderr of each refused input; and the editor's
    latents with and without guidance over the source."""
    from megatron_moviegen.data.bundled import bundled_clips_dir
    from megatron_moviegen.utils.video_io import write_image

    root = Path(root)
    make_tiny_export(root / "edit_export", recipe="edit_tiny")
    destroy()
    make_tiny_export(root / "t2v_export")
    destroy()
    clip = str(bundled_clips_dir() / "carphone_pristine.mp4")
    common = ["--checkpoint", str(root / "edit_export"), "--tae", "toy-tae", "--text-encoders", "toy", "--steps", "3",
              "--prompt", INSTRUCTION]
    video = common + ["--edit-video", clip, "--fps", "8", "--frames", "16", "--height", "64", "--width", "64"]
    for name, extra in (("a", []), ("b", []), ("image_task", ["--task", "image_edit"]),
                        ("bf16", ["--precision", "bf16"])):
        generate(video + extra + ["--output-dir", str(root / name)])
    write_image(root / "frame.png", edit_source_pixels()[0, :, :1])
    generate(common + ["--edit-video", str(root / "frame.png"), "--output-dir", str(root / "image")])
    (root / "corrupt.mp4").write_bytes(b"\x00\x01 not a video " * 200)
    refused = {}
    for name, args in (
            ("t2v_export", ["--checkpoint", str(root / "t2v_export")] + video[2:]),
            ("unknown_task", video + ["--task", "remove_object"]),
            ("corrupt", common + ["--edit-video", str(root / "corrupt.mp4")]),
            ("missing", common + ["--edit-video", str(root / "missing.mp4")]),
            ("odd_size", common + ["--edit-video", clip, "--frames", "8", "--height", "72", "--width", "64"])):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main(args + ["--output-dir", str(root / f"refused_{name}")])
        refused[name] = (status, stderr.getvalue())
    destroy()
    latents = {scale: sample_edit(root / "edit_export", [], source_guidance_scale=scale) for scale in (1.0, 1.5)}
    destroy()
    from megatron_moviegen.inference.editor import EditingConfig, VideoEditor

    cfg, chunks = load_exported_dit(root / "edit_export", [])
    editor = VideoEditor(chunks[0], tiny_tae(), TinyTextEncoders.for_model(cfg.model), cfg.data.edit)
    settings = EditingConfig(steps=3, seed=5, fps=EDIT_SOURCE["fps"])
    edited = editor.edit(edit_source_pixels(), INSTRUCTION, settings)  # pixels in, pixels out
    decoded = editor.pipeline.decode(latents[settings.source_guidance_scale], EDIT_SOURCE["frames"])
    destroy()
    return {"refused": refused, "latents": latents, "edited": edited, "decoded": decoded}


def personalize_cli_job(rank: int, world_size: int, root: str) -> dict:
    """`generate --reference-image` on a tiny random PT2V export (pt2v_tiny) with a tiny random CLIP vision tower and
    frames of the bundled clips as references: one reference twice, another reference, none; the exit status and
    stderr of each refused input."""
    from megatron_moviegen.data.bundled import bundled_clips_dir
    from megatron_moviegen.models.vision_tower import save_tiny_vision_tower

    root = Path(root)
    tower = save_tiny_vision_tower(root / "tower")
    make_tiny_export(root / "pt2v_export", recipe="pt2v_tiny")
    destroy()
    make_tiny_export(root / "t2v_export")
    destroy()
    phone, rabbit = (str(bundled_clips_dir() / name) for name in ("carphone_pristine.mp4", "bigbuckbunny.mp4"))
    common = ["--checkpoint", str(root / "pt2v_export"), "--tae", "toy-tae", "--text-encoders", "toy", "--steps", "3",
              "--prompt", "a short video clip", "--fps", "16", "--frames", "16", "--height", "64", "--width", "64"]
    with_tower = common + ["--reference-encoder", str(tower)]
    for name, extra in (("a", ["--reference-image", phone, "--reference-time", "0.5"]),
                        ("b", ["--reference-image", phone, "--reference-time", "0.5"]),
                        ("other", ["--reference-image", rabbit, "--reference-time", "1"])):
        generate(with_tower + extra + ["--output-dir", str(root / name)])
    generate(common + ["--output-dir", str(root / "none")])  # a PT2V model without a reference: none is loaded
    # The paper's trainable tower: in the DiT (random weights here), reading the reference's pixels.
    from tests.training.test_pt2v import pt2v_overrides

    make_tiny_export(root / "trainable_export", recipe="pt2v_tiny", overrides=tuple(pt2v_overrides(tower)))
    destroy()
    trainable = ["--checkpoint", str(root / "trainable_export")] + with_tower[2:]
    for name, extra in (("trainable_phone", ["--reference-image", phone]),
                        ("trainable_rabbit", ["--reference-image", rabbit]), ("trainable_none", [])):
        generate((trainable if extra else ["--checkpoint", str(root / "trainable_export")] + common[2:]) + extra
                 + ["--output-dir", str(root / name)])
    (root / "corrupt.png").write_bytes(b"\x00\x01 not an image " * 200)
    refused = {}
    for name, args in (
            ("t2v_export", ["--checkpoint", str(root / "t2v_export")] + with_tower[2:] + ["--reference-image", phone]),
            ("missing", with_tower + ["--reference-image", str(root / "missing.png")]),
            ("corrupt", with_tower + ["--reference-image", str(root / "corrupt.png")]),
            ("past_the_end", with_tower + ["--reference-image", phone, "--reference-time", "9"]),
            ("no_tower", common + ["--reference-encoder", str(root / "no_tower"), "--reference-image", phone])):
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            status = main(args + ["--output-dir", str(root / f"refused_{name}")])
        refused[name] = (status, stderr.getvalue())
    destroy()
    return {"refused": refused}
