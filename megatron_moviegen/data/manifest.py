"""Reading what to pre-encode: a JSONL or CSV manifest, or a folder of media with `.txt` caption sidecars.

JSONL/CSV fields: `path` (relative paths are resolved against the manifest's folder), `caption`, and the
optional `fps` (overrides the probed frame rate), `start`/`end` (seconds; the clip window). Editing pairs
(data.edit) add `source` (the unedited video or image; `path` is the edited target, `caption` the instruction)
and optionally `task` (a name from data.edit.tasks). Personalized video (data.reference) adds `reference` (an image,
or a video with `reference_time` in seconds, default 0) and/or `subject` (an id): an entry with a subject and no
reference takes a frame of another clip of the same subject (`resolve_subject_references`), so the model sees the
person, not the target's own pixels.

A malformed file (bad JSON, missing fields) is a ManifestError; an entry whose values are unusable (bytes that
are not UTF-8, an empty caption, `"fps": "nan"`) is read as it is and `entry_problem` says why, so pre-encoding
rejects that entry alone.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.decode import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from megatron_moviegen.utils.io import reading


class ManifestError(ConfigError):
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
    reference: Optional[str] = None  # personalization: the reference image, or a video to take a frame of
    reference_time: Optional[float] = None  # seconds into a video reference (None: 0)
    subject: Optional[str] = None  # personalization: who the clip shows, to find a reference in another clip


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
        reference=_resolve(record["reference"], base) if record.get("reference") else None,
        reference_time=_optional_float(record.get("reference_time"), f"{where} reference_time"),
        subject=str(record["subject"]) if record.get("subject") not in (None, "") else None,
    )


def resolve_subject_references(entries: list[ManifestEntry]) -> list[ManifestEntry]:
    """Entries with a `subject` and no `reference` get one: the first frame of the next clip of the same subject
    (manifest order, wrapping around) from another file, else from another window (`start`) of the same file.
    Entries whose subject has no other clip keep None (`reference_problem` rejects them). Deterministic: the same
    manifest gives the same references."""
    clips: dict[str, list[tuple[str, float]]] = {}
    for entry in entries:
        if entry.subject is not None and (entry.path, entry.start_s) not in clips.get(entry.subject, []):
            clips.setdefault(entry.subject, []).append((entry.path, entry.start_s))
    out = []
    for entry in entries:
        if entry.reference is None and entry.subject is not None:
            others = clips[entry.subject]
            position = others.index((entry.path, entry.start_s))
            following = [others[(position + step) % len(others)] for step in range(1, len(others))]
            choice = next((c for c in following if c[0] != entry.path), following[0] if following else None)
            if choice is not None:
                entry = replace(entry, reference=choice[0], reference_time=choice[1])
        out.append(entry)
    return out


def reference_problem(entry: ManifestEntry) -> Optional[str]:
    """Why this entry has no usable reference image under data.reference, or None."""
    if entry.reference is not None:
        if entry.reference_time is not None and not (math.isfinite(entry.reference_time) and entry.reference_time >= 0):
            return f"reference_time: got {entry.reference_time}, need a finite number >= 0"
        return None
    if entry.subject is not None:
        return (f"subject {entry.subject!r} has no other clip in the manifest to take a reference from; give "
                "'reference' (an image, or a video and 'reference_time')")
    return "data.reference is set but the entry has neither 'reference' nor 'subject'"


def repeated_entries(entries: list[ManifestEntry]) -> dict[int, int]:
    """Index of each entry that repeats an earlier one -> the earlier one's index. A repeat is the same clip of the
    same file with the same caption: equal in every field, its path compared after normalising (`./a.mp4`)."""
    first: dict[ManifestEntry, int] = {}
    repeats = {}
    for index, entry in enumerate(entries):
        key = replace(entry, path=os.path.normpath(entry.path))
        if key in first:
            repeats[index] = first[key]
        else:
            first[key] = index
    return repeats


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
            if not isinstance(record, dict):
                raise ManifestError(f"{path}:{line_no}: got the JSON {type(record).__name__} {line.strip()[:60]}, "
                                    "need an object with \"path\" and \"caption\"")
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
    """A `.jsonl`, `.csv` or a folder -> entries in file order, subjects' references resolved."""
    source = Path(source)
    if not source.exists():
        raise ManifestError(f"{source}: no such manifest file or folder")
    if source.is_dir():
        return read_folder(source)
    if source.suffix in (".jsonl", ".csv"):
        with reading(source, "manifest"):  # empty, or not text: one line naming it
            entries = read_jsonl(source) if source.suffix == ".jsonl" else read_csv(source)
        return resolve_subject_references(entries)
    raise ManifestError(f"{source}: expected a .jsonl or .csv manifest or a folder of media")
