"""Atomic file writes: every file the project writes appears whole or not at all.

    with atomic_output("run/model.safetensors") as tmp:   # any writer that takes a path
        save_file(tensors, str(tmp))
    atomic_write_text("run/summary.json", json.dumps(summary))

The temporary file sits beside the target (same filesystem, so the final `os.replace` is atomic), is named
after the target and this process (`.<name>.<pid>.tmp`, so concurrent ranks never collide and a crashed run's
leftovers are recognisable), and is removed if the writer fails.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success move it to `path` (os.replace), on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_writable_folder(folder: PathLike, what: str = "output folder") -> None:
    """Create `folder` and write a probe file in it, or raise ValueError saying in one line why that is
    impossible."""
    folder = Path(folder)
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"{what} {str(folder)!r} is not writable: {exc.strerror or exc}") from None
