"""A Gradio page to try a text-to-video export: `python -m megatron_moviegen.demo`.

    python -m megatron_moviegen.demo --checkpoint outputs/quickstart/export --tae toy-tae --text-encoders toy
    # then open http://127.0.0.1:7860

The page takes a prompt, seed, Euler steps, guidance, frames, size and fps, and the export and TAE folders (changed
folders are loaded at the next generation); it shows the video and its JSON sidecar. Generations go through
Gradio's queue one at a time (the model and Megatron's parallel state are shared), so two users wait in turn rather
than collide; each generation writes into its own folder under --output-dir. Bad settings (an empty prompt, a size
the model cannot take, a missing folder) are shown as an error on the page, and the server goes on.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
from megatron_moviegen.inference.pipeline import SamplingConfig  # noqa: E402  (after the filter: Megatron warns on import)
from megatron_moviegen.runtime import add_precision_argument  # noqa: E402

DEFAULTS = SamplingConfig()


@dataclass(frozen=True)
class Sources:
    """What a generation loads: the export folder, the TAE, the text encoders."""

    checkpoint: str
    tae: str
    text_encoders: str = "paper"
    text_overrides: tuple[str, ...] = ()


class DemoModel:
    """The loaded pipeline for one `Sources`, reloaded when they change; `generate` writes one video + sidecar."""

    def __init__(self, output_dir: str | Path, precision: str = "auto"):
        self.output_dir = Path(output_dir)
        self.precision = precision
        self.sources: Optional[Sources] = None
        self.pipeline = None
        self._lock = threading.Lock()  # the queue runs one job at a time; this holds if it is ever configured wider
        self._counter = itertools.count()

    def _load(self, sources: Sources) -> None:
        from megatron_moviegen.checkpoints.export import load_exported_dit, read_exported_config
        from megatron_moviegen.inference import MovieGenPipeline
        from megatron_moviegen.inference.components import load_tae, load_text_encoders
        from megatron_moviegen.parallel.initialize import destroy, init_distributed
        from megatron_moviegen.runtime import Runtime

        model = read_exported_config(sources.checkpoint).model  # a missing or broken folder fails before anything
        tae = load_tae(sources.tae)
        text = load_text_encoders(sources.text_encoders, list(sources.text_overrides), model)
        if self.pipeline is not None:
            destroy()
            self.pipeline = None
        runtime = Runtime.resolve(self.precision, distributed_optimizer=False)
        init_distributed(runtime)
        _, chunks = load_exported_dit(sources.checkpoint, runtime=runtime)
        self.pipeline = MovieGenPipeline(chunks[0], tae.to(runtime.device), text,
                                         sources={"checkpoint": sources.checkpoint, "tae": sources.tae,
                                                  "text_encoders": sources.text_encoders})
        self.sources = sources

    def generate(self, sources: Sources, prompt: str, settings: SamplingConfig) -> tuple[Path, dict]:
        """-> (the .mp4 / .png written, its sidecar as a dict)."""
        with self._lock:
            if sources != self.sources:
                self._load(sources)
            folder = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):04d}"
            path = self.pipeline.generate([prompt], settings, folder, progress=False)[0]
        return path, json.loads(path.with_suffix(".json").read_text())


def build_app(model: DemoModel, defaults: Sources):
    """The Gradio Blocks page; its queue runs one generation at a time."""
    import gradio as gr

    from megatron_moviegen.config.schema import ConfigError

    def run(prompt, seed, steps, guidance, frames, height, width, fps, checkpoint, tae):
        sources = Sources(checkpoint.strip(), tae.strip(), defaults.text_encoders, defaults.text_overrides)
        settings = SamplingConfig(num_frames=int(frames), height=int(height), width=int(width), fps=int(fps),
                                  steps=int(steps), guidance_scale=float(guidance), seed=int(seed))
        try:
            path, sidecar = model.generate(sources, prompt, settings)
        except (ConfigError, ValueError, FileNotFoundError, OSError, KeyError) as exc:
            raise gr.Error(f"{type(exc).__name__}: {exc}") from exc
        return str(path), sidecar

    with gr.Blocks(title="Movie Gen") as app:
        gr.Markdown("# Movie Gen text-to-video\nA prompt in, a video out, sampled by the export below.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="prompt", lines=2, elem_id="prompt", value="a red ball bouncing")
                with gr.Row():
                    seed = gr.Number(label="seed", value=DEFAULTS.seed, precision=0)
                    steps = gr.Number(label="Euler steps", value=8, precision=0, minimum=1)
                    guidance = gr.Number(label="guidance scale", value=DEFAULTS.guidance_scale, minimum=0)
                with gr.Row():
                    frames = gr.Number(label="frames", value=16, precision=0, minimum=2)  # the page shows videos
                    height = gr.Number(label="height", value=64, precision=0)
                    width = gr.Number(label="width", value=64, precision=0)
                    fps = gr.Number(label="fps", value=8, precision=0, minimum=1)
                checkpoint = gr.Textbox(label="model (export folder)", value=defaults.checkpoint)
                tae = gr.Textbox(label="TAE folder", value=defaults.tae)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="video", elem_id="video", autoplay=True)
                sidecar = gr.JSON(label="sidecar", elem_id="sidecar")
        button.click(run, [prompt, seed, steps, guidance, frames, height, width, fps, checkpoint, tae],
                     [video, sidecar], api_name="generate", concurrency_limit=1)
    app.queue(default_concurrency_limit=1, max_size=32)
    return app


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Gradio page for a Movie Gen text-to-video export.")
    parser.add_argument("--checkpoint", required=True, help="export folder (tools/export_checkpoint.py)")
    parser.add_argument("--tae", required=True, help="TAE folder, Hub id, or 'toy-tae'")
    parser.add_argument("--text-encoders", choices=("paper", "toy"), default="paper")
    parser.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                        help="paper text-encoder overrides, e.g. ul2.path=/models/ul2")
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    add_precision_argument(parser)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("demo: error: the demo page needs gradio: pip install -e \".[demo]\"", file=sys.stderr)
        return 2
    args = parse_args(argv)
    from megatron_moviegen.checkpoints.export import check_export_folder

    try:
        check_export_folder(args.checkpoint)
    except FileNotFoundError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    model = DemoModel(args.output_dir, args.precision)
    app = build_app(model, Sources(args.checkpoint, args.tae, args.text_encoders, tuple(args.text)))
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(Path(args.output_dir).resolve())],
               show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
