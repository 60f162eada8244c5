"""Reading what to pre-encode: a JSONL or CSV manifest, or a folder of media with `.txt` caption sidecars.

JSONL/CSV fields: `path` (relative paths are resolved against the manifest's folder), `caption`, and the
optional `fps` (overrides the probed frame rate), `start`/`end` (seconds; the clip window). Editing pairs
(data.edit) add `source` (the unedited video or image; `path` is the edited target, `caption` the instruction)
and optionally `task` (a name from data.edit.tasks).

A malformed file (bad JSON, missing fields) is a ManifestError; an entry whose values are unusable (bytes that
are not UTF-8, an empty caption, `"fps": "nan"`) is read as it is and `entry_problem` says why, so pre-encoding
rejects that entry alone.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_moviegen.data.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES


class ManifestError(ValueError):
    """The manifest is malformed; the message names the file and line."""


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    caption: str
    fps: Optional[float] = None
    start_s: float = 0.0
    end_s: Optional[float] = None
    source: Optional[str] = None  # editing: the unedited media, decoded like `path`
    task: Optional[str] = None  # editing: a data.edit.tasks name


def _optional_float(value, where: str) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: got {value!r}, expected a number") from None


def _resolve(path: str, base: Path) -> str:
    """A manifest path; a relative one is taken from the manifest's folder."""
    path = Path(path)
    return str(path if path.is_absolute() else base / path)


def _entry(record: dict, base: Path, where: str) -> ManifestEntry:
    if not record.get("path"):
        raise ManifestError(f"{where}: missing 'path'")
    if "caption" not in record or record["caption"] is None:
        raise ManifestError(f"{where}: missing 'caption'")
    return ManifestEntry(
        path=_resolve(record["path"], base),
        caption=str(record["caption"]),
        fps=_optional_float(record.get("fps"), f"{where} fps"),
        start_s=_optional_float(record.get("start"), f"{where} start") or 0.0,
        end_s=_optional_float(record.get("end"), f"{where} end"),
        source=_resolve(record["source"], base) if record.get("source") else None,
        task=str(record["task"]) if record.get("task") else None,
    )


def entry_problem(entry: ManifestEntry) -> Optional[str]:
    """Why this entry cannot become a sample, or None."""
    try:
        entry.caption.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"caption is not valid UTF-8 (character {exc.start}: {entry.caption[exc.start]!r})"
    try:
        os.fsencode(entry.path)  # undecodable bytes of a real file name pass; a lone "\ud800" does not
    except UnicodeEncodeError as exc:
        return f"path is not a valid file name (character {exc.start}: {entry.path[exc.start]!r})"
    if not entry.caption.strip():
        return "caption is empty"
    if entry.fps is not None and not (math.isfinite(entry.fps) and entry.fps > 0):
        return f"fps: got {entry.fps}, need a finite number > 0"
    if not (math.isfinite(entry.start_s) and entry.start_s >= 0):
        return f"start: got {entry.start_s}, need a finite number >= 0"
    if entry.end_s is not None and not (math.isfinite(entry.end_s) and entry.end_s > entry.start_s):
        return f"end: got {entry.end_s}, need a finite number > start {entry.start_s}"
    return None


def _text(data: bytes) -> str:
    # Bytes that are not UTF-8 become lone surrogates (as in file names): entry_problem names them later.
    return data.decode("utf-8", errors="surrogateescape")


def read_jsonl(path: Path) -> list[ManifestEntry]:
    entries = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, 1):
            line = _text(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            entries.append(_entry(record, path.parent, f"{path}:{line_no}"))
    return entries


def read_csv(path: Path) -> list[ManifestEntry]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: header {reader.fieldnames} lacks {sorted(missing)}")
        return [_entry(row, path.parent, f"{path}:{line_no}") for line_no, row in enumerate(reader, 2)]


def read_folder(folder: Path) -> list[ManifestEntry]:
    """Every video/image under `folder` (sorted), captioned by the `.txt` file of the same stem beside it."""
    media = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
    entries = []
    for path in media:
        sidecar = path.with_suffix(".txt")
        if not sidecar.exists():
            raise ManifestError(f"{path}: no caption sidecar {sidecar.name}")
        entries.append(ManifestEntry(path=str(path), caption=_text(sidecar.read_bytes()).strip()))
    return entries


def read_manifest(source: str | Path) -> list[ManifestEntry]:
    """A `.jsonl`, `.csv` or a folder -> entries in file order."""
    source = Path(source)
    if not source.exists():
        raise ManifestError(f"{source}: no such manifest file or folder")
    if source.is_dir():
        return read_folder(source)
    if source.suffix == ".jsonl":
        return read_jsonl(source)
    if source.suffix == ".csv":
        return read_csv(source)
    raise ManifestError(f"{source}: expected a .jsonl or .csv manifest or a folder of media")
