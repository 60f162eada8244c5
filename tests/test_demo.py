"""The demo page (megatron_moviegen/demo.py) served on localhost and driven through Gradio's own client: a
generation returns the video and its sidecar, two requests at once are queued (both finish, each in its own folder),
and bad settings come back as errors while the server goes on. The page in a real browser: tests/browser/."""

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(export: Path, output_dir: Path, port: int) -> subprocess.Popen:
    """The demo server on 127.0.0.1:port, once it answers (or its output if it exits)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "megatron_moviegen.demo", "--checkpoint", str(export), "--tae", "toy-tae",
         "--text-encoders", "toy", "--output-dir", str(output_dir), "--port", str(port)],
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
    server = serve(root / "export", root / "videos", port)
    yield root, f"http://127.0.0.1:{port}/"
    server.terminate()
    server.wait(timeout=30)


def settings(root: Path, prompt: str = "a red ball", frames: int = 16, height: int = 64) -> tuple:
    return prompt, 3, 4, 7.5, frames, height, 64, 8, str(root / "export"), "toy-tae"


def test_two_generations_at_once_are_queued_and_each_returns_its_video_and_sidecar(demo):
    root, url = demo
    client = gradio_client.Client(url, verbose=False)
    jobs = [client.submit(*settings(root, prompt), api_name="/generate") for prompt in ("a red ball", "a blue cube")]
    results = [job.result(timeout=300) for job in jobs]
    for (video, sidecar), prompt in zip(results, ("a red ball", "a blue cube")):
        assert sidecar["prompt"] == prompt and sidecar["seed"] == 3 and sidecar["steps"] == 4
        assert sidecar["text_prompt"] == f"FPS-8 {prompt}" and sidecar["tae"] == "toy-tae"
        assert read_frames(video).shape == (16, 64, 64, 3)
    folders = sorted(p for p in (root / "videos").iterdir())
    assert len(folders) == 2 and all(len(list(f.glob("*.mp4"))) == 1 for f in folders)


@pytest.mark.parametrize("change, message", [
    (dict(prompt="  "), "prompt 0: got '  ', need some text"),
    (dict(height=60), "got 60 x 64, both must be multiples of 16"),
    (dict(frames=1), "less than minimum value 2"),  # an image is a PNG; the page shows videos
])
def test_bad_settings_are_an_error_on_the_page_and_the_server_goes_on(demo, change, message):
    root, url = demo
    client = gradio_client.Client(url, verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(*settings(root, **change), api_name="/generate")
    video, _ = client.predict(*settings(root), api_name="/generate")
    assert Path(video).is_file()


def test_a_missing_export_folder_is_one_line_before_the_server_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "megatron_moviegen.demo", "--checkpoint", str(tmp_path / "absent"),
                           "--tae", "toy-tae"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("demo: error: checkpoint folder")
