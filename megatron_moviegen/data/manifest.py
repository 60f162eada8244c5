"""Reading what to pre-encode: a JSONL or CSV manifest, or a folder of media with `.txt` caption sidecars.

JSONL/CSV fields: `path` (relative paths are resolved against the manifest's folder), `caption`, and the
optional `fps` (overrides the probed frame rate), `start`/`end` (seconds; the clip window).
"""

from __future__ import annotations

import csv
import json
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


def _optional_float(value, where: str) -> Optional[float]:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: got {value!r}, expected a number") from None


def _entry(record: dict, base: Path, where: str) -> ManifestEntry:
    if not record.get("path"):
        raise ManifestError(f"{where}: missing 'path'")
    if "caption" not in record or record["caption"] is None:
        raise ManifestError(f"{where}: missing 'caption'")
    path = Path(record["path"])
    return ManifestEntry(
        path=str(path if path.is_absolute() else base / path),
        caption=str(record["caption"]),
        fps=_optional_float(record.get("fps"), f"{where} fps"),
        start_s=_optional_float(record.get("start"), f"{where} start") or 0.0,
        end_s=_optional_float(record.get("end"), f"{where} end"),
    )


def read_jsonl(path: Path) -> list[ManifestEntry]:
    entries = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{line_no}: not valid JSON ({exc})") from None
            entries.append(_entry(record, path.parent, f"{path}:{line_no}"))
    return entries


def read_csv(path: Path) -> list[ManifestEntry]:
    with open(path, newline="") as fh:
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
        entries.append(ManifestEntry(path=str(path), caption=sidecar.read_text().strip()))
    return entries


def read_manifest(source: str | Path) -> list[ManifestEntry]:
    """A `.jsonl`, `.csv` or a folder -> entries in file order."""
    source = Path(source)
    if source.is_dir():
        return read_folder(source)
    if source.suffix == ".jsonl":
        return read_jsonl(source)
    if source.suffix == ".csv":
        return read_csv(source)
    raise ManifestError(f"{source}: expected a .jsonl or .csv manifest or a folder of media")
