import hashlib
import json

import pytest

from megatron_moviegen.data.manifest import (ManifestEntry, ManifestError, ManifestFile, entry_problem, manifest_record,
                                             read_manifest, read_slice, repeated_entries)
from megatron_moviegen.data.manifest_index import build_index, read_indexed_slice, wait_for_index


def test_jsonl_with_optional_fields_and_relative_paths(tmp_path):
    lines = [{"path": "a.mp4", "caption": "a cat", "fps": 24, "start": 1.5, "end": 9},
             {"path": "/abs/b.png", "caption": "a dog"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert read_manifest(tmp_path / "m.jsonl") == [
        ManifestEntry(str(tmp_path / "a.mp4"), "a cat", 24.0, 1.5, 9.0),
        ManifestEntry("/abs/b.png", "a dog"),
    ]


def test_csv(tmp_path):
    (tmp_path / "m.csv").write_text('path,caption,fps,start,end\nv.mp4,"a, b",,2,\n')
    assert read_manifest(tmp_path / "m.csv") == [ManifestEntry(str(tmp_path / "v.mp4"), "a, b", None, 2.0, None)]


def test_folder_with_caption_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.mp4", "sub/a.jpg"):
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).with_suffix(".txt").write_text(f"caption of {name}\n")
    entries = read_manifest(tmp_path)
    assert [(e.path, e.caption) for e in entries] == [
        (str(tmp_path / "b.mp4"), "caption of b.mp4"), (str(tmp_path / "sub/a.jpg"), "caption of sub/a.jpg")]


def test_errors_name_file_and_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4", "caption": "x"}\n{"caption": "y"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing 'path'"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.csv").write_text("file,caption\n")
    with pytest.raises(ManifestError, match="lacks"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "v.mp4").write_bytes(b"x")
    with pytest.raises(ManifestError, match="no caption sidecar"):
        read_manifest(tmp_path)


def test_bytes_that_are_not_utf8_are_read_and_named_not_fatal(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"path,caption\nv.mp4,caf\xe9\n")
    (tmp_path / "v.mp4").write_bytes(b"x")
    (tmp_path / "v.txt").write_bytes(b"\xff caption")
    for entry in read_manifest(tmp_path / "m.csv") + read_manifest(tmp_path):
        assert entry_problem(entry).startswith("caption is not valid UTF-8")


@pytest.mark.parametrize("entry, problem", [
    (ManifestEntry("a.mp4", "ok", fps=24.0, start_s=1.0, end_s=2.0), None),
    (ManifestEntry("a.mp4", "x" * 10_000), None),
    (ManifestEntry("a.mp4", " \n"), "caption is empty"),
    (ManifestEntry("a.mp4", "ok", fps=float("inf")), "fps: got inf, need a finite number > 0"),
    (ManifestEntry("a.mp4", "ok", start_s=-1.0), "start: got -1.0, need a finite number >= 0"),
    (ManifestEntry("a.mp4", "ok", start_s=3.0, end_s=2.0), "end: got 2.0, need a finite number > start 3.0"),
    (ManifestEntry("a\ud800.mp4", "ok"), "path is not a valid file name (character 1: '\\ud800')"),
])
def test_entry_problem_names_the_field_and_value(entry, problem):
    assert entry_problem(entry) == problem


def test_missing_manifest_is_one_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest file or folder"):
        read_manifest(tmp_path / "absent.jsonl")


def test_each_ranks_slice_of_a_streamed_manifest_is_what_the_whole_manifest_gives(tmp_path):
    lines = [{"path": "a.mp4", "caption": "ann 1", "subject": "ann"},
             {"path": "./a.mp4", "caption": "ann 1", "subject": "ann"},
             {"path": "b.png", "caption": "b"}, {"path": "b.png", "caption": "b", "fps": 24},
             {"path": "b.png", "caption": "b", "fps": 24.0}, {"path": "c.mp4", "caption": "bob", "subject": "bob"},
             {"path": "a.mp4", "caption": "ann 2", "start": 2, "subject": "ann"}, {"path": "/abs/b.png", "caption": "b"},
             {"path": "d.mp4", "caption": "ann 3", "subject": "ann"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    whole = read_manifest(tmp_path / "m.jsonl")
    assert repeated_entries(whole) == {1: 0, 4: 3}
    for world in (1, 3):
        for rank in range(world):
            part = read_slice(ManifestFile(tmp_path / "m.jsonl"), lambda index: index % world == rank)
            assert (part.num_entries, part.sha256) == (len(whole), manifest_hash(whole))
            assert part.entries == {i: entry for i, entry in enumerate(whole) if i % world == rank}
            assert part.repeats == {i: j for i, j in repeated_entries(whole).items() if i % world == rank}
    # --limit: the first entries, hashed alone, but a subject's reference may come from past the limit
    part = read_slice(ManifestFile(tmp_path / "m.jsonl", limit=2), lambda index: True)
    assert (part.entries, part.sha256) == (dict(enumerate(whole[:2])), manifest_hash(whole[:2]))
    assert part.entries[0].reference == str(tmp_path / "d.mp4")


def test_a_streamed_csv_slice_is_what_the_whole_csv_gives(tmp_path):
    (tmp_path / "m.csv").write_text('path,caption,fps\nv.mp4,"a, b",\nw.mp4,c,24\n./v.mp4,"a, b",\n')
    whole = read_manifest(tmp_path / "m.csv")
    part = read_slice(ManifestFile(tmp_path / "m.csv"), lambda index: index == 2)
    assert (part.entries, part.repeats, part.sha256) == ({2: whole[2]}, {2: 0}, manifest_hash(whole))


def manifest_hash(entries: list[ManifestEntry]) -> str:
    """The run identity pre-encoding recorded before manifests were streamed."""
    return hashlib.sha256(json.dumps([manifest_record(e) for e in entries]).encode()).hexdigest()


def test_a_ranks_slice_read_through_the_manifest_index_is_the_slice_read_whole(tmp_path):
    """Pre-encoding reruns parse only their own lines (`manifest_index`): same entries, repeats (found through
    key hashes, one repeat's original far before the slice), entry count and run identity as a whole read."""
    lines = [{"path": "a.mp4", "caption": "a"}, {"path": "b.png", "caption": "b"}, {"path": "./a.mp4", "caption": "a"},
             {"path": "b.png", "caption": "b", "fps": 24}, {"path": "c.mp4", "caption": "ç"},
             {"path": "b.png", "caption": "b", "fps": 24.0}, {"path": "a.mp4", "caption": "a", "start": 1}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines[:3]) + "\n\n"
                        + "\n".join(json.dumps(line, ensure_ascii=False) for line in lines[3:]))  # no last newline
    for world in (1, 3):
        for rank in range(world):
            whole = read_slice(ManifestFile(manifest), lambda index: index % world == rank)
            assert build_index(manifest, tmp_path / "index", lambda index: index % world == rank) == whole
            mine = lambda count: [i for i in range(count) if i % world == rank]
            assert read_indexed_slice(manifest, tmp_path / "index", mine) == whole
    assert read_indexed_slice(manifest, tmp_path / "index", lambda count: [5]).repeats == {5: 3}
    manifest.write_text(manifest.read_text().replace('"b"', '"B"'))  # same size, a new modification time
    assert read_indexed_slice(manifest, tmp_path / "index", lambda count: [0]) is None


def test_a_manifest_whose_subjects_need_references_is_not_indexed(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": "a.mp4", "caption": "a"}) + "\n"
                        + json.dumps({"path": "b.mp4", "caption": "b", "subject": "ann"}) + "\n")
    assert build_index(manifest, tmp_path / "index", lambda index: True) is None
    assert not (tmp_path / "index").exists()
    manifest.write_text('{"path": "a.mp4", "caption": "a"}\n{"path": "b.mp4"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: missing 'caption'"):
        build_index(manifest, tmp_path / "index", lambda index: True)
    assert not (tmp_path / "index").exists()


def test_other_ranks_take_rank_0s_index_as_it_appears_and_stop_waiting_when_it_writes_none(tmp_path):
    """A first run: ranks other than 0 wait for the index rank 0 writes on its pass (staged, then published), so
    the manifest is parsed whole once; a manifest rank 0 does not index (subjects) ends the wait at once."""
    import threading
    import time

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"{i}.mp4", "caption": f"c{i % 3}"}) + "\n" for i in range(9)))
    published, staged = tmp_path / "out" / "index" / "manifest", tmp_path / ".out.manifest.staged"
    mine = lambda count: [i for i in range(count) if i % 2 == 1]  # noqa: E731
    writer = threading.Timer(0.3, build_index, args=(manifest, staged, lambda index: index % 2 == 0))
    writer.start()
    started = time.monotonic()
    part = wait_for_index(manifest, [published, staged], mine, wait_s=30, poll_s=0.05)
    writer.join()
    assert part == read_slice(ManifestFile(manifest), lambda index: index % 2 == 1) and time.monotonic() - started < 10
    assert wait_for_index(manifest, [published, tmp_path / "absent"], mine, wait_s=0.1, poll_s=0.05) is None
    manifest.write_text(json.dumps({"path": "a.mp4", "caption": "a", "subject": "ann"}) + "\n")
    assert build_index(manifest, staged, lambda index: True) is None  # rank 0: no index for subjects, and says so
    started = time.monotonic()
    assert wait_for_index(manifest, [published, staged], mine, wait_s=30, poll_s=0.05) is None
    assert time.monotonic() - started < 5
