"""A Gradio page to try a text-to-video export: `python -m megatron_moviegen.demo`.

    python -m megatron_moviegen.demo --checkpoint outputs/quickstart/export --tae toy-tae --text-encoders toy
    # then open http://127.0.0.1:7860 (--share: a public gradio.live link as well)

The operator chooses the export, the TAE and the text encoders when starting the server; a visitor chooses only the
prompt, a negative prompt, seed, steps, guidance and, from the export's trained buckets, the size, the frame count and
the fps (model.trained_fps, else the buckets' frame rate). Generations run one at a time (the model and Megatron's
parallel state are shared); up to --max-queue requests wait their turn and any beyond get "busy" at once. Each
generation writes into its own folder under --output-dir. Bad settings (an empty prompt) are shown as an error on the
page, and the server goes on.
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
from megatron_moviegen.inference.pipeline import SamplingConfig, check_prompts  # noqa: E402  (after the filter: Megatron warns on import)
from megatron_moviegen.runtime import add_precision_argument  # noqa: E402

DEFAULTS = SamplingConfig()


@dataclass(frozen=True)
class Sources:
    """What the server loads, once: the export folder, the TAE, the text encoders (the operator's choice)."""

    checkpoint: str
    tae: str
    text_encoders: str = "paper"
    text_overrides: tuple[str, ...] = ()
    rewriter: Optional[str] = None  # a causal LM folder that rewrites each visitor's prompt (text/rewrite.py)


@dataclass(frozen=True)
class PageChoices:
    """What a visitor may pick, from the export's config: sizes "HxW" (one per aspect ratio), frame counts, fps."""

    sizes: tuple[str, ...]
    frames: tuple[int, ...]
    fps: tuple[int, ...]

    @classmethod
    def of_export(cls, checkpoint: str) -> "PageChoices":
        from megatron_moviegen.checkpoints.export import read_exported_config
        from megatron_moviegen.data.buckets import BucketTable

        cfg = read_exported_config(checkpoint)
        videos = [b for b in BucketTable(cfg.data.buckets).buckets() if b.num_frames > 1]
        if not videos:
            raise ValueError(f"--checkpoint: {checkpoint} was trained without video buckets (data.buckets."
                             "durations_s is empty); the page makes videos")
        sizes = tuple(dict.fromkeys(f"{b.height}x{b.width}" for b in videos))
        fps = tuple(cfg.model.trained_fps) or (round(cfg.data.buckets.frame_rate),)
        return cls(sizes, tuple(sorted({b.num_frames for b in videos})), fps)


class Busy(RuntimeError):
    """More generations are waiting than the server takes (--max-queue)."""


class DemoModel:
    """The pipeline of `sources`, loaded at the first generation; `generate` writes one video + sidecar. At most
    `max_queue` generations wait (the running one included); one more is refused with Busy."""

    def __init__(self, sources: Sources, output_dir: str | Path, precision: str = "auto", max_queue: int = 8):
        self.sources = sources
        self.output_dir = Path(output_dir)
        self.precision = precision
        self.max_queue = max_queue
        self.pipeline = None
        self.rewriter = None
        self._lock = threading.Lock()  # one generation at a time
        self._waiting_lock = threading.Lock()
        self._waiting = 0
        self._counter = itertools.count()

    def _load(self) -> None:
        from megatron_moviegen.checkpoints.export import load_exported_dit, read_exported_config
        from megatron_moviegen.inference import MovieGenPipeline
        from megatron_moviegen.inference.components import load_tae, load_text_encoders
        from megatron_moviegen.parallel.initialize import init_distributed
        from megatron_moviegen.runtime import Runtime

        sources = self.sources
        model = read_exported_config(sources.checkpoint).model
        tae = load_tae(sources.tae)
        text = load_text_encoders(sources.text_encoders, list(sources.text_overrides), model)
        runtime = Runtime.resolve(self.precision, distributed_optimizer=False)
        init_distributed(runtime)
        _, chunks = load_exported_dit(sources.checkpoint, runtime=runtime)
        recorded = {"checkpoint": sources.checkpoint, "tae": sources.tae, "text_encoders": sources.text_encoders}
        if sources.rewriter is not None:
            from megatron_moviegen.text.rewrite import PromptRewriter

            self.rewriter = PromptRewriter(sources.rewriter, device=runtime.device)
            recorded["prompt_rewriter"] = sources.rewriter
        self.pipeline = MovieGenPipeline(chunks[0], tae.to(runtime.device), text, sources=recorded)

    def generate(self, prompt: str, settings: SamplingConfig) -> tuple[Path, dict]:
        """-> (the .mp4 written, its sidecar as a dict); Busy when max_queue generations are waiting already."""
        with self._waiting_lock:
            if self._waiting >= self.max_queue:
                raise Busy(f"busy: {self._waiting} generation(s) are running or waiting, the most this server takes; "
                           "try again in a minute")
            self._waiting += 1
        try:
            with self._lock:
                if self.pipeline is None:
                    self._load()
                folder = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self._counter):04d}"
                prompts, user_prompts = [prompt], None
                if self.rewriter is not None:
                    check_prompts(prompts)
                    prompts, user_prompts = [self.rewriter.rewrite(prompt)], [prompt]
                path = self.pipeline.generate(prompts, settings, folder, progress=False, user_prompts=user_prompts)[0]
        finally:
            with self._waiting_lock:
                self._waiting -= 1
        return path, json.loads(path.with_suffix(".json").read_text())


def build_app(model: DemoModel, choices: PageChoices):
    """The Gradio Blocks page. Requests enter at once (no Gradio concurrency limit): DemoModel orders them and turns
    away those beyond its queue."""
    import gradio as gr

    from megatron_moviegen.config.schema import ConfigError

    def run(prompt, negative_prompt, seed, steps, guidance, size, frames, fps):
        height, width = (int(side) for side in size.split("x"))
        settings = SamplingConfig(num_frames=int(frames), height=height, width=width, fps=int(fps),
                                  steps=int(steps), guidance_scale=float(guidance), seed=int(seed),
                                  negative_prompt=negative_prompt or None)
        try:
            path, sidecar = model.generate(prompt, settings)
        except (Busy, ConfigError, ValueError, FileNotFoundError, OSError, KeyError) as exc:
            raise gr.Error(f"{type(exc).__name__}: {exc}") from exc
        return str(path), sidecar

    sources = model.sources
    with gr.Blocks(title="Movie Gen") as app:
        gr.Markdown(f"# Movie Gen text-to-video\nA prompt in, a video out. Model `{sources.checkpoint}`, TAE "
                    f"`{sources.tae}`, text encoders `{sources.text_encoders}`.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="prompt", lines=2, elem_id="prompt", value="a red ball bouncing")
                negative = gr.Textbox(label="negative prompt (empty: none)", lines=1, elem_id="negative")
                with gr.Row():
                    seed = gr.Number(label="seed", value=DEFAULTS.seed, precision=0)
                    steps = gr.Number(label="Euler steps", value=8, precision=0, minimum=1, maximum=1000)
                    guidance = gr.Number(label="guidance scale", value=DEFAULTS.guidance_scale, minimum=0)
                with gr.Row():
                    size = gr.Dropdown(list(choices.sizes), value=choices.sizes[0], label="size (height x width)")
                    frames = gr.Dropdown(list(choices.frames), value=choices.frames[0], label="frames")
                    fps = gr.Dropdown(list(choices.fps), value=choices.fps[0], label="fps")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="video", elem_id="video", autoplay=True)
                sidecar = gr.JSON(label="sidecar", elem_id="sidecar")
        button.click(run, [prompt, negative, seed, steps, guidance, size, frames, fps], [video, sidecar],
                     api_name="generate", concurrency_limit=None)
    app.queue(default_concurrency_limit=None)
    return app


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A Gradio page for a Movie Gen text-to-video export.")
    parser.add_argument("--checkpoint", required=True, help="export folder (tools/export_checkpoint.py)")
    parser.add_argument("--tae", default=None, help="TAE folder, Hub id, or 'toy-tae'; default: the one the export was "
                                                     "trained with (recorded by pre-encoding)")
    parser.add_argument("--text-encoders", choices=("paper", "toy"), default=None,
                        help="default: those the export was trained with (and their recorded overrides), else paper")
    parser.add_argument("--text", action="append", default=[], metavar="FIELD=VALUE",
                        help="paper text-encoder overrides, e.g. ul2.path=/models/ul2")
    parser.add_argument("--output-dir", default="outputs/demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument("--rewrite-prompt", default=None, metavar="MODEL",
                        help="rewrite each visitor's prompt into a dense caption with this local causal LM (the "
                             "sidecar keeps both)")
    parser.add_argument("--max-queue", type=int, default=8,
                        help="generations running or waiting at most; one more is told the server is busy")
    add_precision_argument(parser)
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("demo: error: the demo page needs gradio: pip install -e \".[demo]\"", file=sys.stderr)
        return 2
    args = parse_args(argv)
    from megatron_moviegen.checkpoints.export import check_export_folder, read_exported_config
    from megatron_moviegen.inference.components import default_sources

    try:
        check_export_folder(args.checkpoint)
        choices = PageChoices.of_export(args.checkpoint)
        args.tae, args.text_encoders, args.text = default_sources(
            args.tae, args.text_encoders, args.text, read_exported_config(args.checkpoint).model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    if args.max_queue < 1:
        print(f"demo: error: --max-queue: got {args.max_queue}, must be >= 1", file=sys.stderr)
        return 2
    sources = Sources(args.checkpoint, args.tae, args.text_encoders, tuple(args.text), args.rewrite_prompt)
    model = DemoModel(sources, args.output_dir, args.precision, args.max_queue)
    app = build_app(model, choices)
    app.launch(server_name=args.host, server_port=args.port, share=args.share,
               allowed_paths=[str(Path(args.output_dir).resolve())], show_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
