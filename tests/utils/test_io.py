"""Folders rewritten whole: a write killed midway (an exception here) leaves the previous folder as it was."""

import pytest

from megatron_moviegen.utils.io import replacing_folder, staging_folder, start_staging


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _old_folder(tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"old a")
    (folder / "sub" / "b.bin").write_bytes(b"old b")
    return folder


def test_a_rewrite_killed_midway_leaves_the_old_folder_byte_identical_and_no_staging(tmp_path):
    folder = _old_folder(tmp_path)
    before = _files(folder)
    with pytest.raises(KeyboardInterrupt), replacing_folder(folder) as staging:
        (staging / "a.bin").write_bytes(b"new a")
        raise KeyboardInterrupt("killed")
    assert _files(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_finished_rewrite_replaces_the_whole_folder(tmp_path):
    folder = _old_folder(tmp_path)
    with replacing_folder(folder) as staging:
        assert staging == staging_folder(folder) and staging.name == ".out.staging" and not any(staging.iterdir())
        (staging / "a.bin").write_bytes(b"new a")
    assert _files(folder) == {"a.bin": b"new a"}  # sub/b.bin of the old folder is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_swap_killed_between_its_renames_is_undone_by_the_next_write(tmp_path):
    folder = _old_folder(tmp_path)
    before = _files(folder)
    folder.rename(tmp_path / ".out.old")  # set aside; the new folder never renamed in
    (tmp_path / ".out.staging").mkdir()
    (tmp_path / ".out.staging" / "half.bin").write_bytes(b"half")
    staging = start_staging(folder)
    assert _files(folder) == before and not any(staging.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.staging", "out"]
