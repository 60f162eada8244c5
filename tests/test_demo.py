"""The demo page (megatron_moviegen/demo.py) served on localhost and driven through Gradio's own client: a
generation returns the video and its sidecar, two requests at once are queued (both finish, each in its own folder),
one more than --max-queue is told the server is busy, a visitor picks sizes from the export's buckets and cannot name
a server path, and bad settings come back as errors while the server goes on. The page in a real browser:
tests/browser/."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_moviegen.utils.video_io import read_frames
from tests.harness import run_distributed
from tests.inference.jobs import make_tiny_export

gradio_client = pytest.importorskip("gradio_client", reason="the demo needs gradio (the dev install has it)")
REPO = Path(__file__).resolve().parents[1]


def _export_job(rank: int, world_size: int, folder: str) -> None:
    make_tiny_export(Path(folder))


def _rewriter(folder: Path) -> Path:
    from megatron_moviegen.text.rewrite import save_tiny_rewriter

    return save_tiny_rewriter(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(export: Path, output_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """The demo server on 127.0.0.1:port, once it answers (or its output if it exits)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "megatron_moviegen.demo", "--checkpoint", str(export), "--tae", "toy-tae",
         "--text-encoders", "toy", "--output-dir", str(output_dir), "--port", str(port), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the demo exited with {server.returncode}: {server.stdout.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise TimeoutError("the demo did not start in 120 s")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    run_distributed(_export_job, world_size=1, args=(str(root / "export"),))
    port = free_port()
    server = serve(root / "export", root / "videos", port, "--max-queue", "2", "--rewrite-prompt",
                   str(_rewriter(root / "rewriter")))
    yield root, f"http://127.0.0.1:{port}/"
    server.terminate()
    server.wait(timeout=30)


def settings(prompt: str = "a red ball", negative: str = "", size: str = "64x64") -> tuple:
    """The page's inputs: prompt, negative prompt, seed, steps, guidance, size, frames, fps (the tiny recipe's
    buckets: 64x64 or 48x80, 32 frames, 16 fps)."""
    return prompt, negative, 3, 4, 7.5, size, 32, 16


def test_two_generations_at_once_are_queued_and_each_returns_its_video_and_sidecar(demo):
    root, url = demo
    client = gradio_client.Client(url, verbose=False)
    jobs = [client.submit(*settings(prompt), api_name="/generate") for prompt in ("a red ball", "a blue cube")]
    results = [job.result(timeout=300) for job in jobs]
    for (video, sidecar), prompt in zip(results, ("a red ball", "a blue cube")):
        # The operator's --rewrite-prompt model rewrote the visitor's prompt; the sidecar keeps both.
        assert sidecar["user_prompt"] == prompt and sidecar["seed"] == 3 and sidecar["steps"] == 4
        assert sidecar["prompt_rewriter"] == str(root / "rewriter") and sidecar["prompt"] != prompt
        assert sidecar["text_prompt"] == f"FPS-16 {sidecar['prompt']}" and sidecar["tae"] == "toy-tae"
        assert sidecar["negative_prompt"] is None
        assert read_frames(video).shape == (32, 64, 64, 3)
    folders = sorted(p for p in (root / "videos").iterdir())
    assert len(folders) == 2 and all(len(list(f.glob("*.mp4"))) == 1 for f in folders)


def test_one_request_more_than_the_queue_takes_is_told_the_server_is_busy(demo):
    root, url = demo
    client = gradio_client.Client(url, verbose=False)
    jobs = [client.submit(*settings(f"clip {i}"), api_name="/generate") for i in range(3)]  # --max-queue 2
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(Path(job.result(timeout=300)[0]).is_file())
        except Exception as exc:  # gradio_client's AppError carries the page's message
            outcomes.append(str(exc))
    assert outcomes.count(True) == 2, outcomes
    assert any(isinstance(o, str) and "busy: 2 generation(s) are running or waiting" in o for o in outcomes)


def test_a_visitor_picks_the_exports_buckets_and_cannot_name_a_server_path(demo):
    root, url = demo
    client = gradio_client.Client(url, verbose=False)
    names = [p["parameter_name"] for p in client.view_api(print_info=False, return_format="dict")
             ["named_endpoints"]["/generate"]["parameters"]]
    assert names == ["prompt", "negative_prompt", "seed", "steps", "guidance", "size", "frames", "fps"]
    video, sidecar = client.predict(*settings(negative="blurry", size="48x80"), api_name="/generate")
    assert read_frames(video).shape == (32, 48, 80, 3) and sidecar["negative_prompt"] == "blurry"
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict(*settings(size="720x1280"), api_name="/generate")


def test_a_blank_prompt_is_an_error_on_the_page_and_the_server_goes_on(demo):
    root, url = demo
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception, match="prompt 0: got '  ', need some text"):
        client.predict(*settings("  "), api_name="/generate")
    video, _ = client.predict(*settings(), api_name="/generate")
    assert Path(video).is_file()


def test_a_missing_export_folder_is_one_line_before_the_server_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "megatron_moviegen.demo", "--checkpoint", str(tmp_path / "absent"),
                           "--tae", "toy-tae"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("demo: error: checkpoint folder")
