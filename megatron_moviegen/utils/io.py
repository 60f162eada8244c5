"""Atomic file writes: every file the project writes appears whole or not at all.

    with atomic_output("run/model.safetensors") as tmp:   # any writer that takes a path
        save_file(tensors, str(tmp))
    atomic_write_text("run/summary.json", json.dumps(summary))

The temporary file sits beside the target (same filesystem, so the final `os.replace` is atomic), is named
after the target and this process (`.<name>.<pid>.tmp`, so concurrent ranks never collide and a crashed run's
leftovers are recognisable), and is removed if the writer fails.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar, Union


from megatron_moviegen.config.schema import ConfigError, load_yaml

PathLike = Union[str, os.PathLike]
T = TypeVar("T")


class DamagedFileError(ConfigError):
    """A file the project reads is empty, cut short or not what it should be; the message names the file, what it
    should have been and what is wrong, in one line."""


@contextlib.contextmanager
def reading(path: PathLike, what: str) -> Iterator[Path]:
    """Around a reader of `path` (a parser, `torch.load`, `safe_open`): an empty file, or any error of the reader
    other than the file being absent or unreadable (OSError), is one DamagedFileError naming `path` and `what`
    it should be ("shard index", "recipe")."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DamagedFileError(f"{path}: empty (0 bytes), expected a {what}")
    try:
        yield path
    except ConfigError:  # ours already name the file
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno not in (None, errno.EINVAL):
            raise  # absent, not readable, EIO: the file system's error, not the file's content
        size = path.stat().st_size if path.is_file() else 0
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DamagedFileError(f"{path}: damaged, not a complete {what} ({size} bytes; {type(exc).__name__}: "
                               f"{first})") from None


def read_file_as(path: PathLike, what: str, parse: Callable[[str], T]) -> T:
    """`parse` of the file's text (UTF-8), every failure one DamagedFileError naming the file (`reading`)."""
    with reading(path, what) as path:
        return parse(path.read_bytes().decode("utf-8"))


def read_json_file(path: PathLike, what: str, kind: type = dict) -> Any:
    """A JSON file whose top level is a `kind` (dict, list), or one DamagedFileError naming it."""
    return read_file_as(path, what, lambda text: _of_kind(json.loads(text), kind))


def read_yaml_file(path: PathLike, what: str, kind: type = dict) -> Any:
    """A YAML file whose top level is a `kind`, or one DamagedFileError naming it."""
    return read_file_as(path, what, lambda text: _of_kind(load_yaml(text), kind))


def _of_kind(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"got {type(value).__name__} at the top level, expected {kind.__name__}")
    return value


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


def _logged_step(row: str) -> int | None:
    try:
        return json.loads(row)["step"]
    except ValueError:  # a row cut short by a kill
        return None


def drop_metrics_after(path: Path, step: int) -> None:
    """Remove rows logged after `step` (steps a killed run did past its last checkpoint, about to be redone) and
    rows cut short."""
    if not path.exists():
        return
    rows = [row for row in path.read_text().splitlines()
            if (logged := _logged_step(row)) is not None and logged <= step]
    atomic_write_text(path, "".join(row + "\n" for row in rows))


def staging_folder(folder: PathLike) -> Path:
    """Where the next version of `folder` is written before `swap_in_folder` puts it in place: `.<name>.staging`
    beside it (same filesystem; hidden, so never taken for the folder itself). The same path on every rank."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.staging")


def _set_aside(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


def start_staging(folder: PathLike, staging: PathLike | None = None) -> Path:
    """An empty staging folder for `folder` (`staging`, beside it; default `staging_folder(folder)`), a killed run's
    leftover staging removed; a swap killed between its two renames is finished first (the old folder put back if
    the new one never arrived, else deleted)."""
    folder = Path(folder)
    old = _set_aside(folder)
    if old.exists():
        if folder.exists():
            shutil.rmtree(old)
        else:
            old.rename(folder)
    staging = Path(staging or staging_folder(folder))
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def swap_in_folder(folder: PathLike, staging: PathLike | None = None) -> Path:
    """Replace `folder` by its complete staging folder (`staging`, a folder beside it; default
    `staging_folder(folder)`): the old one renamed aside (`.<name>.old`), the new one renamed in, then the old one
    deleted. Killed at any point, `folder` is the old or the new version whole (or, between the renames, the old one
    waits at `.<name>.old` for the next `start_staging`)."""
    folder = Path(folder)
    old = _set_aside(folder)
    if folder.exists() or folder.is_symlink():
        folder.rename(old)
    Path(staging or staging_folder(folder)).rename(folder)
    if old.is_symlink():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)
    return folder


@contextlib.contextmanager
def replacing_folder(folder: PathLike) -> Iterator[Path]:
    """One process: yield an empty staging folder for `folder`; on success swap it in (`swap_in_folder`), on error
    delete it, leaving `folder` as it was."""
    staging = start_staging(folder)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in_folder(folder)


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


# What a full disk looks like through the writers we use: an OSError with ENOSPC/EDQUOT, or torch.save's
# RuntimeError ("[enforce fail at inline_container.cc:672] ... file write failed") that keeps no errno.
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_DISK_TEXTS = ("No space left on device", "Disk quota exceeded", "file write failed")


def is_full_disk(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the disk or quota is full."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _FULL_DISK_ERRNOS:
            return True
        if isinstance(exc, (OSError, RuntimeError)) and any(text in str(exc) for text in _FULL_DISK_TEXTS):
            return True
        # torch.distributed.checkpoint's CheckpointException (a background save's failure): {rank: (exception, tb)}
        failures = getattr(exc, "failures", None)
        if isinstance(failures, dict) and any(
                is_full_disk(failure[0] if isinstance(failure, tuple) else failure)
                for failure in failures.values() if isinstance(failure, (BaseException, tuple))):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder: PathLike) -> int:
    """Free bytes on the file system holding `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def full_disk_message(folder: PathLike, what: str, exc: BaseException) -> str:
    """One line for a write into `folder` that failed because the disk is full."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"{what}: the disk holding {folder} is full ({free_bytes(folder) / 2**30:.2f} GiB free; "
            f"{type(exc).__name__}: {first[:160]})")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_byte_size(text: str) -> int:
    """"5GB" -> 5_000_000_000, "512MiB" -> 536_870_912, "1000" -> 1000."""
    match = _SIZE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"size: got {text!r}, expected a positive number of bytes such as 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def byte_size_argument(text: str) -> int:
    """`parse_byte_size` as an argparse `type=`: a bad size is the parser's one-line usage error."""
    try:
        return parse_byte_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
