"""A `.jsonl` manifest's index, so that a pre-encoding rank rerun into a folder parses only its own lines.

Without it every rank parses every line of the manifest (~22 us an entry: 37 min at 100M entries, on every
rank, on every rerun): the run's identity hashes every record and the repeat check needs every entry's key. Rank 0
writes the index on the pass it makes anyway without one (`build_index`) and publishes it in the output
folder; a later run of any rank that finds it valid reads its lines by byte offset (`read_indexed_slice`):

    <out>/index/manifest/header.json   {"format", "manifest" (absolute path), "base" (its folder as named),
                                        "inode", "size", "mtime_ns", "entries", "sha256" (the run identity
                                        `read_slice` computes)}
    <out>/index/manifest/offsets.bin   int64 per entry: the byte offset of its line
    <out>/index/manifest/keys.bin      uint64 per entry: 8 bytes of blake2b over its `repeat_key`

The repeat check scans keys.bin up to this rank's last entry (numpy, a chunk at a time) and parses only the lines
whose key hash one of its entries has, then compares the keys themselves. The index is valid while the manifest
keeps the inode, size and modification time recorded (the quick check make and rsync use, and a file replaced by a
rename is another inode) and is named from the same folder (relative media paths resolve against it); any other manifest, a CSV,
a folder, `--limit`, or a manifest with an entry whose subject needs a reference (PT2V: resolved against every
clip of the subject) is read whole as before (`manifest.read_slice`), with the same result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from array import array
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from megatron_moviegen.data.manifest import (ManifestEntry, ManifestError, ManifestFile, ManifestSlice, parse_line,
                                             record_bytes, repeat_key)
from megatron_moviegen.utils.io import atomic_write_text, read_json_file

log = logging.getLogger(__name__)

FORMAT = 2
INDEX_DIR = "manifest"
_CHUNK = 1 << 16  # entries a write buffer or a scan of keys.bin holds


def indexable(manifest) -> bool:
    """Whether `manifest` can have an index: a whole `.jsonl` `ManifestFile` (no `limit`)."""
    return isinstance(manifest, ManifestFile) and manifest.limit is None and manifest.source.suffix == ".jsonl"


def key_hash(entry: ManifestEntry) -> int:
    """8 bytes of blake2b over `repeat_key(entry)`: equal keys hash equal in every process."""
    return int.from_bytes(hashlib.blake2b(repr(repeat_key(entry)).encode(), digest_size=8).digest(), "little")


def build_index(source: Path, folder: Path, keep: Callable[[int], bool]) -> Optional[ManifestSlice]:
    """Index the `.jsonl` manifest `source` into `folder` (made anew) in one pass, parsing each line as
    `manifest.read_jsonl` does (a malformed line raises `ManifestError` naming it), and return the slice of the
    indices `keep` accepts (as `read_indexed_slice` would read it); None, and no folder, when an entry has a
    subject but no reference."""
    shutil.rmtree(folder, ignore_errors=True)
    _none_marker(folder).unlink(missing_ok=True)
    folder.mkdir(parents=True)
    try:
        written = _write_index(source, folder, keep)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if written is None:
        shutil.rmtree(folder)
        atomic_write_text(_none_marker(folder), json.dumps(_identity(source, os.stat(source))))  # waiters stop
        return None
    header, kept = written
    atomic_write_text(folder / "header.json", json.dumps(header))  # last: a folder without it is no index
    return _slice(source, header, *_columns(folder, header), lambda offsets, fh: kept)


def _none_marker(folder: Path) -> Path:
    """Where `build_index` says that it wrote no index for a manifest (so ranks waiting for one stop)."""
    return folder.with_name(folder.name + ".none")


def wait_for_index(source: Path, folders: list[Path], kept: Callable[[int], Iterable[int]], wait_s: float,
                   poll_s: float = 0.5) -> Optional[ManifestSlice]:
    """`read_indexed_slice` from the first of `folders` (the published index, then rank 0's staging folder) that
    holds a valid index for `source`, polling up to `wait_s` seconds while rank 0 writes it; None when the wait
    runs out or rank 0 marked the manifest as one it does not index (its marker beside the last folder)."""
    start = time.monotonic()
    deadline, noted = start + wait_s, False
    while True:
        for folder in folders:
            part = read_indexed_slice(source, folder, kept)
            if part is not None:
                return part
        marker = _none_marker(folders[-1])
        if marker.exists() and _marked(marker, source):
            return None
        if not noted and time.monotonic() - start > 60:
            log.warning("%s: waiting up to %.0f s for the manifest index rank 0 writes on its pass (set "
                        "data.manifest_index_wait_s=0 to read the manifest whole on every rank)", source, wait_s)
            noted = True
        if time.monotonic() >= deadline:
            log.warning("%s: no manifest index from rank 0 after %.0f s (data.manifest_index_wait_s); reading the "
                        "manifest whole", source, wait_s)
            return None
        time.sleep(poll_s)


def _marked(marker: Path, source: Path) -> bool:
    try:
        return json.loads(marker.read_text()) == _identity(source, os.stat(source))
    except (OSError, ValueError):
        return False


def _write_index(source: Path, folder: Path, keep: Callable[[int], bool]
                 ) -> Optional[tuple[dict, dict[int, ManifestEntry]]]:
    before = os.stat(source)
    digest = hashlib.sha256(b"[")
    count = offset = 0
    offsets, keys = array("q"), array("Q")
    kept = {}
    with open(source, "rb") as fh, open(folder / "offsets.bin", "wb") as offsets_out, \
            open(folder / "keys.bin", "wb") as keys_out:
        for line_no, raw in enumerate(fh, 1):
            entry = parse_line(raw, source, line_no)
            if entry is not None:
                if entry.subject is not None and entry.reference is None:
                    return None
                digest.update((b", " if count else b"") + record_bytes(entry))
                offsets.append(offset)
                keys.append(key_hash(entry))
                if keep(count):
                    kept[count] = entry
                count += 1
                if len(offsets) == _CHUNK:
                    _flush(offsets, offsets_out), _flush(keys, keys_out)
            offset += len(raw)
        _flush(offsets, offsets_out), _flush(keys, keys_out)
    digest.update(b"]")
    header = {"format": FORMAT, **_identity(source, before), "entries": count, "sha256": digest.hexdigest()}
    return header, kept


def _flush(values: array, sink) -> None:
    values.tofile(sink)
    del values[:]


def read_indexed_slice(source: Path, folder: Path, kept: Callable[[int], Iterable[int]]) -> Optional[ManifestSlice]:
    """The `ManifestSlice` `manifest.read_slice` gives for the manifest indices `kept(number of entries)`
    (ascending), read through the index in `folder`; None when there is no valid index for `source` as it is now
    (or its folder was moved away while read: rank 0 publishing its staged index)."""
    try:
        header = _valid_header(source, folder)
    except (OSError, ValueError):  # header.json moved away (published) or being replaced
        return None
    if header is None:
        return None

    def entries(offsets: "_Column", fh) -> dict[int, ManifestEntry]:
        mine = np.fromiter(kept(header["entries"]), np.int64)
        return {index: _entry_from(fh, source, int(offset), index)
                for index, offset in zip(mine.tolist(), offsets.at(mine))}

    try:
        columns = _columns(folder, header)
    except (OSError, ValueError) as exc:  # rank 0 replacing a stale index now, or a damaged one: read it whole
        log.info("%s: manifest index unusable (%s); reading the manifest whole", folder, exc)
        return None
    try:
        return _slice(source, header, *columns, entries)
    except FileNotFoundError:  # keys.bin moved with its folder between the header check and the scan
        return None


def _columns(folder: Path, header: dict) -> tuple["_Column", "_Column"]:
    """The index's (offsets, keys) arrays, opened."""
    offsets = _Column(folder / "offsets.bin", np.int64, header["entries"])
    try:
        return offsets, _Column(folder / "keys.bin", np.uint64, header["entries"])
    except BaseException:
        offsets.close()
        raise


def _slice(source: Path, header: dict, offsets: "_Column", keys: "_Column", entries) -> ManifestSlice:
    """The slice of the entries `entries(offsets, manifest file)` gives, with their repeats; closes the columns."""
    try:
        with open(source, "rb") as fh:
            kept = entries(offsets, fh)
            repeats = _repeats(kept, keys, lambda index: _entry_at(fh, source, offsets, index))
    finally:
        offsets.close(), keys.close()
    return ManifestSlice(header["entries"], header["sha256"], kept, repeats)


def _identity(source: Path, stat: os.stat_result) -> dict:
    """What must not change for the index to stand: the file (its absolute path, inode, size and modification
    time) and the folder its relative media paths are resolved against, as the manifest was named."""
    return {"manifest": str(Path(source).resolve()), "base": str(Path(source).parent), "inode": stat.st_ino,
            "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _valid_header(source: Path, folder: Path) -> Optional[dict]:
    path = folder / "header.json"
    if not path.exists():
        return None
    header = read_json_file(path, "manifest index")
    now = _identity(source, os.stat(source))
    fresh = header.get("format") == FORMAT and all(header.get(key) == value for key, value in now.items())
    if not fresh:
        log.info("%s: made for another manifest or an older version of %s; reading the manifest whole", folder, source)
    return header if fresh else None


class _Column:
    """One of the index's arrays, read with pread where needed: not memory-mapped, so a rank's scattered reads do
    not leave the kernel's fault-around pages of an 800 MB file (100M entries) in its resident set."""

    def __init__(self, path: Path, dtype, count: int):
        self.dtype, self.count = np.dtype(dtype), count
        size = path.stat().st_size
        if size != count * self.dtype.itemsize:
            raise ValueError(f"{path}: {size} bytes for {count} entries")
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        os.close(self.fd)

    def __getitem__(self, index: int):
        return np.frombuffer(os.pread(self.fd, self.dtype.itemsize, index * self.dtype.itemsize), self.dtype)[0]

    def at(self, indices: np.ndarray) -> np.ndarray:
        """The values at ascending `indices`, one read per run of consecutive ones."""
        out = np.empty(len(indices), self.dtype)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(indices) != 1) + 1, [len(indices)]]).astype(int)
        for first, end in zip(starts[:-1].tolist(), starts[1:].tolist()):
            raw = os.pread(self.fd, (end - first) * self.dtype.itemsize, int(indices[first]) * self.dtype.itemsize)
            out[first:end] = np.frombuffer(raw, self.dtype)
        return out


def _entry_at(fh, source: Path, offsets: _Column, index: int) -> ManifestEntry:
    return _entry_from(fh, source, int(offsets[index]), index)


def _entry_from(fh, source: Path, offset: int, index: int) -> ManifestEntry:
    fh.seek(offset)
    entry = parse_line(fh.readline(), source, f"entry {index}")
    if entry is None:
        raise ManifestError(f"{source}: entry {index} is not where its index says; the manifest changed without "
                            "changing its size and modification time: delete the output folder's index/manifest")
    return entry


def _repeats(kept: dict[int, ManifestEntry], keys: "_Column", entry_at) -> dict[int, int]:
    """As `manifest._repeats_of`: kept index (ascending) -> the first index with its `repeat_key`, for those that
    repeat one. Only the other lines whose key hash one of the kept entries has are parsed. The kept entries' hashes
    come from `keys`, which the scan then reads a chunk at a time."""
    own = {index: repeat_key(entry) for index, entry in kept.items()}
    first: dict[tuple, int] = {}
    for index, key in own.items():
        first.setdefault(key, index)
    indices = np.fromiter(kept, np.int64, len(kept))
    wanted = np.unique(keys.at(indices))  # sorted
    end = int(indices[-1]) + 1 if len(indices) else 0
    for start in range(0, end, _CHUNK):
        chunk = keys.at(np.arange(start, min(start + _CHUNK, end)))  # one read: the indices are consecutive
        hits = start + np.flatnonzero(_members(chunk, wanted))
        for index in hits[~_members(hits, indices)].tolist():
            key = repeat_key(entry_at(index))
            if first.get(key, -1) > index:
                first[key] = index
    repeats = {index: first.get(key, index) for index, key in own.items()}
    return {index: earlier for index, earlier in repeats.items() if earlier < index}


def _members(values: np.ndarray, ascending: np.ndarray) -> np.ndarray:
    """values in `ascending` (sorted), as a bool mask: one binary search each (np.isin sorts its set every call)."""
    if not len(ascending):
        return np.zeros(len(values), dtype=bool)
    return ascending[np.minimum(np.searchsorted(ascending, values), len(ascending) - 1)] == values


def publish_index(staged: Path, index_dir: Path) -> None:
    """Move an index `build_index` wrote to `staged` into `index_dir/manifest`, replacing an older one."""
    target = index_dir / INDEX_DIR
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staged, target)
