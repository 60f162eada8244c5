import json

import pytest

from megatron_moviegen.data.manifest import ManifestEntry, ManifestError, read_manifest


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
