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
import hashlib
import itertools
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

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


def _resolve(path: str, base: str) -> str:
    """A manifest path; a relative one is taken from the manifest's folder `base` (as pathlib writes it).
    Written as pathlib writes it (`./a//b/` -> `a/b`); a path pathlib would leave as it is is joined without it
    (4 us -> 0.7 us an entry)."""
    if "//" in path or "/./" in path or path.startswith("./") or path.endswith(("/", "/.")) or path == ".":
        path = Path(path)
        return str(path if path.is_absolute() else Path(base) / path)
    return path if base == "." else os.path.join(base, path)


def _entry(record: dict, base: str, where: str) -> ManifestEntry:
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


class SubjectClips:
    """Each subject's distinct clips, (path, start) in manifest order, and for each clip the reference it gives
    an entry of that clip: the next clip of the subject (wrapping around) from another file, else the next clip.
    Built in one pass, each lookup O(1); memory: the distinct clips of entries that have a subject."""

    def __init__(self, entries: Iterable[ManifestEntry] = ()):
        self._clips: dict[str, dict[tuple[str, float], None]] = {}  # subject -> its clips, in order (a dict as a set)
        self._choice: Optional[dict[str, dict[tuple[str, float], tuple[str, float]]]] = None
        for entry in entries:
            self.add(entry)

    def add(self, entry: ManifestEntry) -> None:
        if entry.subject is not None:
            self._clips.setdefault(entry.subject, {})[(entry.path, entry.start_s)] = None
            self._choice = None

    def resolve(self, entry: ManifestEntry) -> ManifestEntry:
        """`entry` with its subject's reference filled in; unchanged when it has a reference, no subject, or a
        subject with no other clip."""
        if entry.reference is not None or entry.subject is None:
            return entry
        if self._choice is None:
            self._choice = {subject: _reference_choices(list(clips)) for subject, clips in self._clips.items()}
        choice = self._choice.get(entry.subject, {}).get((entry.path, entry.start_s))
        return entry if choice is None else replace(entry, reference=choice[0], reference_time=choice[1])


def _reference_choices(clips: list[tuple[str, float]]) -> dict[tuple[str, float], tuple[str, float]]:
    """Clip -> the first of the clips after it (wrapping around) from another file, else the clip right after it;
    none for a lone clip. Linear: walking backwards twice around the circle, a clip whose successor shares its
    file takes the successor's answer."""
    count = len(clips)
    if count < 2:
        return {}
    other: list[Optional[int]] = [None] * count
    for step in range(2 * count - 1, -1, -1):
        here, after = step % count, (step + 1) % count
        other[here] = after if clips[after][0] != clips[here][0] else other[after]
    return {clip: clips[(i + 1) % count if other[i] is None else other[i]] for i, clip in enumerate(clips)}


def resolve_subject_references(entries: list[ManifestEntry]) -> list[ManifestEntry]:
    """Entries with a `subject` and no `reference` get one: the first frame of the next clip of the same subject
    (manifest order, wrapping around) from another file, else from another window (`start`) of the same file.
    Entries whose subject has no other clip keep None (`reference_problem` rejects them). Deterministic: the same
    manifest gives the same references. Linear in the manifest (`SubjectClips`)."""
    clips = SubjectClips(entries)
    return [clips.resolve(entry) for entry in entries]


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


def repeat_key(entry: ManifestEntry) -> tuple:
    """What makes two entries the same clip of the same file with the same caption: every field, the path
    normalised (`./a.mp4`)."""
    return (os.path.normpath(entry.path), *list(entry.__dict__.values())[1:])


def repeated_entries(entries: list[ManifestEntry]) -> dict[int, int]:
    """Index of each entry that repeats an earlier one -> the earlier one's index (`repeat_key` equal)."""
    first: dict[tuple, int] = {}
    repeats = {}
    for index, entry in enumerate(entries):
        earlier = first.setdefault(repeat_key(entry), index)
        if earlier != index:
            repeats[index] = earlier
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


@dataclass(frozen=True)
class Candidates:
    """The entries a repeat check must make of a manifest's lines: those at an index `skip` refuses (checked
    before the line is parsed) with one of `captions` (a repeat has the caption of the entry it repeats)."""

    captions: set[str]
    skip: Callable[[int], bool]

    def other_caption(self, record: dict) -> bool:
        return record.get("caption") is not None and str(record["caption"]) not in self.captions


def read_jsonl(path: Path, only: Optional[Candidates] = None) -> Iterator[Optional[ManifestEntry]]:
    """The file's entries in order; with `only`, None in place of each other one."""
    name, base = str(path), str(path.parent)
    with open(path, "rb") as fh:
        index = -1
        for line_no, raw in enumerate(fh, 1):
            line = _text(raw)
            if not line.strip():
                continue
            index += 1
            if only is not None and only.skip(index):
                yield None
                continue
            record = _json_record(line, path, line_no)
            yield None if only is not None and only.other_caption(record) else _entry(record, base, f"{name}:{line_no}")


def parse_line(raw: bytes, path: Path, line_no: int | str) -> Optional[ManifestEntry]:
    """The entry of one raw line of the `.jsonl` manifest at `path`, as `read_jsonl` makes it; None for a blank
    line."""
    line = _text(raw)
    return _entry(_json_record(line, path, line_no), str(path.parent), f"{path}:{line_no}") if line.strip() else None


def _json_record(line: str, path: Path, line_no: int | str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{line_no}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ManifestError(f"{path}:{line_no}: got the JSON {type(record).__name__} {line.strip()[:60]}, "
                            "need an object with \"path\" and \"caption\"")
    return record


def read_csv(path: Path, only: Optional[Candidates] = None) -> Iterator[Optional[ManifestEntry]]:
    """As `read_jsonl`."""
    name, base = str(path), str(path.parent)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: header {reader.fieldnames} lacks {sorted(missing)}")
        for index, row in enumerate(reader):
            if only is not None and (only.skip(index) or only.other_caption(row)):
                yield None
            else:
                yield _entry(row, base, f"{name}:{index + 2}")


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


class ManifestFile:
    """A manifest read as a stream, one entry at a time (a `.jsonl` or `.csv` file; a folder is listed whole):
    iterating gives its first `limit` entries (all when None) in file order, subjects' references not yet
    resolved (`read_slice` resolves them against every entry of the file, `pool`)."""

    def __init__(self, source: str | Path, limit: Optional[int] = None):
        self.source, self.limit = Path(source), limit
        if not self.source.exists():
            raise ManifestError(f"{self.source}: no such manifest file or folder")
        if not self.source.is_dir() and self.source.suffix not in (".jsonl", ".csv"):
            raise ManifestError(f"{self.source}: expected a .jsonl or .csv manifest or a folder of media")

    def __iter__(self) -> Iterator[ManifestEntry]:
        return itertools.islice(self.pool(), self.limit)

    def candidates(self, only: Candidates) -> Iterator[Optional[ManifestEntry]]:
        """As iterating, with None in place of each entry `only` leaves out (a cheaper read)."""
        return itertools.islice(self.pool(only), self.limit)

    def pool(self, only: Optional[Candidates] = None) -> Iterator[Optional[ManifestEntry]]:
        """Every entry of the file, past `limit` too (the clips a subject's reference may come from); with
        `only`, as `candidates`."""
        if self.source.is_dir():
            yield from (entry if only is None or not (only.skip(index) or only.other_caption(entry.__dict__))
                        else None for index, entry in enumerate(read_folder(self.source)))
            return
        with reading(self.source, "manifest"):  # empty, or not text: one line naming it
            yield from (read_jsonl if self.source.suffix == ".jsonl" else read_csv)(self.source, only)


def read_manifest(source: str | Path) -> list[ManifestEntry]:
    """A `.jsonl`, `.csv` or a folder -> entries in file order, subjects' references resolved."""
    return resolve_subject_references(list(ManifestFile(source)))


def manifest_record(entry: ManifestEntry) -> dict:
    """An entry's fields for the manifest hash; the editing fields only when set, so a plain manifest hashes as it
    did before they existed (its folders still resume)."""
    return {k: v for k, v in entry.__dict__.items() if v is not None or k not in OPTIONAL_ENTRY_FIELDS}


def record_bytes(entry: ManifestEntry) -> bytes:
    """An entry's part of the run identity: its `manifest_record` as JSON."""
    return json.dumps(manifest_record(entry)).encode()


# Manifest fields added after the first datasets were written: left out of the hash while unset.
OPTIONAL_ENTRY_FIELDS = ("source", "task", "reference", "reference_time", "subject")


@dataclass
class ManifestSlice:
    """One pre-encoding rank's view of a manifest: the entries it keeps (references resolved) and which of them
    repeat an earlier entry, plus the whole manifest's size and identity."""

    num_entries: int
    sha256: str  # of the JSON list of every entry's `manifest_record`, as pre-encoding always hashed it
    entries: dict[int, ManifestEntry]  # manifest index -> entry, for the kept indices
    repeats: dict[int, int]  # kept index -> the earlier index it repeats (`repeated_entries`)


def read_slice(manifest: Iterable[ManifestEntry], keep: Callable[[int], bool]) -> ManifestSlice:
    """The entries of `manifest` whose index `keep` accepts, hashed and checked for repeats against the whole
    manifest in streaming passes: one to hash and keep, one up to the last kept index for repeats among the
    others (making entries of only the lines whose caption a kept entry has; the kept lines are not parsed
    again). A list is taken as it is (`read_manifest` resolved its references); a `ManifestFile` has its
    subjects' references resolved, which costs the first pass again when an entry needs one (and a pass over the
    whole file first when `limit` is set). Memory: the kept entries, plus the clips of entries that have a
    subject (`SubjectClips`); time linear in the manifest."""
    if not isinstance(manifest, ManifestFile):
        count, digest, kept = _hash_and_keep(manifest, keep)
        others = (None if keep(index) else entry for index, entry in enumerate(manifest))
        return ManifestSlice(count, digest, kept, _repeats_of(kept, others))
    subjects = SubjectClips(manifest.pool() if manifest.limit is not None else ())  # from past the limit too
    unresolved = False

    def collect(entry: ManifestEntry) -> ManifestEntry:
        nonlocal unresolved
        subjects.add(entry)
        unresolved = unresolved or (entry.subject is not None and entry.reference is None)
        return entry

    count, digest, kept = _hash_and_keep(map(collect, manifest), keep)
    if unresolved:  # hashed and kept before their references were known: again, resolved
        count, digest, kept = _hash_and_keep(map(subjects.resolve, manifest), keep)
    others = manifest.candidates(Candidates({entry.caption for entry in kept.values()}, keep))
    return ManifestSlice(count, digest, kept, _repeats_of(kept, (e and subjects.resolve(e) for e in others)))


def _hash_and_keep(entries: Iterable[ManifestEntry], keep: Callable[[int], bool]
                   ) -> tuple[int, str, dict[int, ManifestEntry]]:
    """(number of entries, sha256 of json.dumps([manifest_record(e) for e in entries]) computed a record at a
    time, the kept entries by index)."""
    digest = hashlib.sha256(b"[")
    kept = {}
    count = 0
    for count, entry in enumerate(entries, 1):
        digest.update((b", " if count > 1 else b"") + record_bytes(entry))
        if keep(count - 1):
            kept[count - 1] = entry
    digest.update(b"]")
    return count, digest.hexdigest(), kept


def _repeats_of(kept: dict[int, ManifestEntry], others: Iterable[Optional[ManifestEntry]]) -> dict[int, int]:
    """Kept index -> the first index with its `repeat_key`, among the kept entries (in index order) and
    `others`, the manifest's entries with None at each kept index or entry known to repeat none of them."""
    first: dict[tuple, int] = {}
    for index, entry in kept.items():
        first.setdefault(repeat_key(entry), index)
    for index, entry in enumerate(itertools.islice(others, max(kept, default=-1) + 1)):
        key = None if entry is None else repeat_key(entry)
        if first.get(key, -1) > index:
            first[key] = index
    # .get: a key holding NaN (`"fps": "nan"`) equals no other parse of its line, as it never did
    repeats = {index: first.get(repeat_key(entry), index) for index, entry in kept.items()}
    return {index: earlier for index, earlier in repeats.items() if earlier < index}
