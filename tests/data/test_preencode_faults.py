"""Pre-encoding under faults: transient and permanent I/O errors, bad manifest entries, changed encoders and
the bad-input matrix of docs/reliability.md. Nothing may be lost: every entry ends as a sample or a reject."""

import errno
import fcntl
import json
import multiprocessing
import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data import preencode as preencode_module
from megatron_moviegen.data import shards as shards_module
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.preencode import IORetry, Preencoder
from megatron_moviegen.models.tae import TAE, TAEConfig
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from tests.data.conftest import write_garbage
from tests.data.test_preencode import read_all, small_config

FORK = multiprocessing.get_context("fork")

REPO = Path(__file__).resolve().parents[2]


def write_manifest(folder: Path, rows: list[dict], name: str = "manifest.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(manifest: Path, out: Path, retry_rejects: bool = False, video_encoder=None, **overrides):
    config = small_config(**overrides)
    return Preencoder(config, video_encoder or TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), out).run(
        read_manifest(manifest), retry_rejects=retry_rejects)


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "tools/preencode_latents.py", "--tae", "toy-conv", "--text-encoders", "toy", "--device", "cpu",
         "--num-workers", "0", "--set", "buckets.resolution=128",
         "buckets.durations_s=[1,2]", "io_retry_delay_s=0", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


@pytest.fixture
def no_sleep(monkeypatch) -> list[float]:
    """Record the retry waits instead of sleeping through them."""
    waits: list[float] = []
    monkeypatch.setattr(preencode_module.time, "sleep", waits.append)
    return waits


def flaky_av_open(monkeypatch, path_suffix: str, failures: int) -> list[str]:
    """av.open raises EIO for files ending in `path_suffix` the first `failures` times (an NFS hiccup)."""
    real_open = av.open
    failed: list[str] = []

    def open_(path, *args, **kwargs):
        if str(path).endswith(path_suffix) and len(failed) < failures:
            failed.append(str(path))
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", open_)
    return failed


def test_io_retry_waits_double_and_the_last_error_propagates(no_sleep):
    calls = []

    def always_fails():
        calls.append(1)
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        IORetry(retries=3, first_delay_s=0.5).call(always_fails)
    assert len(calls) == 4 and no_sleep == [0.5, 1.0, 2.0]


def test_transient_read_error_is_retried_and_the_sample_kept(clips, tmp_path, monkeypatch, no_sleep):
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "clip.mp4")
    manifest = write_manifest(tmp_path, [{"path": "clip.mp4", "caption": "a phone call"}])
    failed = flaky_av_open(monkeypatch, "clip.mp4", failures=2)
    summary = run(manifest, tmp_path / "out")
    assert len(failed) == 2 and no_sleep == [0.5, 1.0]
    assert (summary.encoded, summary.rejected) == (1, 0)
    assert list(read_all(tmp_path / "out")) == ["000000000"]


def test_lasting_read_error_is_an_io_reject_after_the_retries(clips, tmp_path, monkeypatch, no_sleep):
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "clip.mp4")
    manifest = write_manifest(tmp_path, [{"path": "clip.mp4", "caption": "a phone call"}])
    flaky_av_open(monkeypatch, "clip.mp4", failures=100)
    run(manifest, tmp_path / "out")
    assert no_sleep == [0.5, 1.0, 2.0]
    (reject,) = rejects(tmp_path / "out")
    clip = tmp_path / "clip.mp4"
    assert reject["kind"] == "io"
    assert reject["reason"] == f"MediaReadError: {clip}: cannot read ([Errno 5] Input/output error: '{clip}') (4 tries)"


def test_decoder_refusal_is_not_retried(tmp_path, no_sleep):
    write_garbage(tmp_path / "noise.mp4")
    manifest = write_manifest(tmp_path, [{"path": "noise.mp4", "caption": "noise"}])
    run(manifest, tmp_path / "out")
    assert no_sleep == []
    assert [(r["kind"], r["index"]) for r in rejects(tmp_path / "out")] == [("decode", 0)]


@pytest.fixture
def three_entries(clips, tmp_path) -> Path:
    """Shard 0: a clip, then a clip whose file is not there yet; shard 1: a garbage file."""
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "a.mp4")
    write_garbage(tmp_path / "noise.mp4")
    return write_manifest(tmp_path, [{"path": "a.mp4", "caption": "first"},
                                     {"path": "later.mp4", "caption": "second"},
                                     {"path": "noise.mp4", "caption": "noise"}])


def test_unreadable_file_is_an_io_reject_and_retry_rejects_keeps_it(three_entries, tmp_path, clips, no_sleep):
    out = tmp_path / "out"
    run(three_entries, out)
    assert [(r["index"], r["kind"]) for r in rejects(out)] == [(1, "io"), (2, "decode")]
    assert "No such file" in rejects(out)[0]["reason"] and rejects(out)[0]["reason"].endswith("(1 try)")
    assert no_sleep == []  # a missing file is the file system's answer: no waiting, --retry-rejects reads it
    before = read_all(out)
    other_shard = (out / "shard-000001.tar").read_bytes() if (out / "shard-000001.tar").exists() else None
    other_index = (out / "index" / "shard-000001.tar.json").read_bytes()

    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "later.mp4")  # the file system is back
    plain = run(three_entries, out)
    assert (plain.shards_written, plain.shards_skipped) == (0, 2)  # without the flag nothing is re-read

    summary = run(three_entries, out, retry_rejects=True)
    assert (summary.shards_written, summary.shards_skipped, summary.encoded) == (1, 1, 1)
    after = read_all(out)
    assert sorted(after) == ["000000000", "000000001"]
    assert after["000000000"] == before["000000000"]  # the kept sample is copied byte for byte
    assert [(r["index"], r["kind"]) for r in rejects(out)] == [(2, "decode")]
    assert (out / "index" / "shard-000001.tar.json").read_bytes() == other_index
    assert ((out / "shard-000001.tar").read_bytes() if other_shard is not None else None) == other_shard
    assert json.loads((out / "summary.json").read_text())["samples"] == 2
    fresh = tmp_path / "fresh"
    run(three_entries, fresh)
    assert read_all(fresh) == after  # as if the file had been readable the first time
    assert not list(out.glob(".*tmp*")) and not list((out / "index").glob(".*tmp*"))


def test_a_crash_while_rewriting_leaves_the_shard_to_be_redone(three_entries, tmp_path, clips, no_sleep,
                                                                  monkeypatch):
    out = tmp_path / "out"
    run(three_entries, out)
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "later.mp4")
    real_write = shards_module.atomic_write_text

    def crash_on_index(path, text):
        if path.parent.name == "index":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, text)

    monkeypatch.setattr(shards_module, "atomic_write_text", crash_on_index)
    with pytest.raises(OSError, match="No space"):
        run(three_entries, out, retry_rejects=True)
    assert not (out / "index" / "shard-000000.tar.json").exists()  # incomplete, not described by a stale index
    monkeypatch.setattr(shards_module, "atomic_write_text", real_write)
    summary = run(three_entries, out)  # a plain rerun redoes the incomplete shard
    assert summary.shards_written == 1 and sorted(read_all(out)) == ["000000000", "000000001"]
    assert [r["index"] for r in rejects(out)] == [2]


@pytest.fixture
def poisoned_manifest(clips, tmp_path) -> Path:
    """A good clip between entries whose own fields are unusable."""
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "a.mp4")
    path = write_manifest(tmp_path, [{"path": "a.mp4", "caption": "good"},
                                     {"path": "a.mp4", "caption": "lone \ud800 surrogate"},
                                     {"path": "a.mp4", "caption": "x", "fps": "nan"},
                                     {"path": "a.mp4", "caption": "x", "fps": -25}])
    with open(path, "ab") as fh:
        fh.write(b'{"path": "a.mp4", "caption": "caf\xe9 in latin-1"}\n')
    return path


POISON_REASONS = [(1, "caption is not valid UTF-8 (character 5: '\\ud800')"),
                  (2, "fps: got nan, need a finite number > 0"),
                  (3, "fps: got -25.0, need a finite number > 0"),
                  (4, "caption is not valid UTF-8 (character 3: '\\udce9')")]


def test_poisoned_manifest_entries_are_rejected_not_fatal(poisoned_manifest, tmp_path):
    summary = run(poisoned_manifest, tmp_path / "out")
    assert (summary.encoded, summary.rejected) == (1, 4)
    assert [(r["index"], r["reason"]) for r in rejects(tmp_path / "out")] == POISON_REASONS
    assert {r["kind"] for r in rejects(tmp_path / "out")} == {"manifest"}


def test_tool_rejects_poisoned_entries_without_a_traceback(poisoned_manifest, tmp_path):
    out = run_tool("--manifest", str(poisoned_manifest), "--out", str(tmp_path / "out"))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert json.loads(out.stdout)["rejected"] == 4
    assert [(r["index"], r["reason"]) for r in rejects(tmp_path / "out")] == POISON_REASONS


def test_resume_with_another_encoder_is_refused_naming_both(three_entries, tmp_path, no_sleep):
    out = tmp_path / "out"
    run(three_entries, out, shard_size=1)
    (out / "index" / "shard-000002.tar.json").unlink()  # as if killed before the last shard
    with pytest.raises(ConfigError) as refused:
        run(three_entries, out, shard_size=1, video_encoder=TinyVideoEncoder(seed=1))
    message = str(refused.value)
    first, second = (preencode_module.encoder_record(TinyVideoEncoder(seed=s))["sha256"][:12] for s in (0, 1))
    assert f"from TinyVideoEncoder (weights sha256 {first})" in message
    assert f"video encoder is TinyVideoEncoder (sha256 {second})" in message
    assert not (out / "index" / "shard-000002.tar.json").exists()  # nothing written with the other encoder
    assert run(three_entries, out, shard_size=1).shards_written == 1  # the same encoder resumes


def test_encoder_record_changes_with_weights_or_shapes():
    model = load_config("tiny").model
    same = [preencode_module.encoder_record(TinyTextEncoders.for_model(model, seed=0)) for _ in range(2)]
    assert same[0] == same[1] and same[0]["name"] == "TinyTextEncoders"
    assert preencode_module.encoder_record(TinyTextEncoders.for_model(model, seed=1)) != same[0]
    shapes = {"ul2": (32, 16), "metaclip": (24, 8), "byt5": (16, 4)}
    assert preencode_module.encoder_record(TinyTextEncoders(shapes)) != same[0]


def write_mp4(path: Path, num_frames: int, height: int = 144, width: int = 176, fps: int = 25) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 5 * i % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def remux_faststart(src: Path, dst: Path) -> Path:
    """The same packets with the header (moov) first, as web downloads have it."""
    with av.open(str(src)) as source, av.open(str(dst), "w", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    return dst


# (file, caption, kind, what the reason says): the rows of docs/reliability.md's pre-encoding matrix.
BAD_MEDIA = [
    ("good.mp4", "a phone call", None, None),
    ("missing.mp4", "gone", "io", "No such file or directory"),
    ("zero.mp4", "empty file", "decode", "Invalid data found"),
    ("half.mp4", "truncated", "decode", "Invalid data found"),
    ("cut_faststart.mp4", "header first, cut", "decode", "but the video ends at"),
    ("text.mp4", "not a video", "decode", "Invalid data found"),
    ("one_frame.mp4", "one frame", "bucket", "gives 1 frames; the shortest bucket needs 16"),
    ("short.mp4", "ten frames", "bucket", "gives 10 frames; the shortest bucket needs 16"),
    ("tiny.mp4", "32x32 pixels", "bucket", "upscale"),
    ("good.mp4", "", "manifest", "caption is empty"),
    ("good.mp4", "y" * 10_000, None, None),
]


@pytest.fixture
def bad_media(clips, tmp_path) -> Path:
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "good.mp4")
    (tmp_path / "zero.mp4").write_bytes(b"")
    whole = (clips / "bigbuckbunny.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(whole[: len(whole) // 2])
    cut = remux_faststart(clips / "carphone_pristine.mp4", tmp_path / "faststart.mp4").read_bytes()
    (tmp_path / "cut_faststart.mp4").write_bytes(cut[: len(cut) // 10])  # header whole, most frames missing
    (tmp_path / "text.mp4").write_text("this is a text file, not a video\n")
    write_mp4(tmp_path / "one_frame.mp4", 1)
    write_mp4(tmp_path / "short.mp4", 10)
    write_mp4(tmp_path / "tiny.mp4", 40, height=32, width=32)
    path = write_manifest(tmp_path, [{"path": name, "caption": caption} for name, caption, _, _ in BAD_MEDIA])
    with open(path, "ab") as fh:
        fh.write(b'{"path": "good.mp4", "caption": "caf\xe9 in latin-1"}\n')
    return path


def test_tool_bad_input_matrix_rejects_each_with_a_reason_and_retry_keeps_the_missing_one(bad_media, tmp_path,
                                                                                           clips):
    out = tmp_path / "out"
    first = run_tool("--manifest", str(bad_media), "--out", str(out), "--shard-size", "4")
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    got = {r["index"]: r for r in rejects(out)}
    for index, (name, _, kind, says) in enumerate(BAD_MEDIA):
        if kind is None:
            assert index not in got
        else:
            assert got[index]["kind"] == kind and says in got[index]["reason"], got[index]
    latin1 = len(BAD_MEDIA)
    assert got[latin1]["kind"] == "manifest" and "not valid UTF-8" in got[latin1]["reason"]
    samples = read_all(out)
    assert sorted(samples) == ["000000000", "000000010"]  # nothing else encoded, nothing lost
    assert json.loads(samples["000000010"]["json"])["caption"] == "y" * 10_000  # kept whole; encoders truncate

    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "missing.mp4")
    again = run_tool("--manifest", str(bad_media), "--out", str(out), "--shard-size", "4", "--retry-rejects")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["shards_written"] == 1  # only the shard that held the io reject
    assert sorted(read_all(out)) == ["000000000", "000000001", "000000010"]
    assert 1 not in {r["index"] for r in rejects(out)}


@pytest.mark.parametrize("case", ["malformed line", "line not an object", "missing manifest", "output under a file",
                                  "bad override"])
def test_tool_exits_2_with_one_line_and_writes_nothing(case, tmp_path, clips):
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "good.mp4")
    manifest = write_manifest(tmp_path, [{"path": "good.mp4", "caption": "fine"}])
    out = tmp_path / "out"
    args, says = {
        "malformed line": ([], f"{tmp_path / 'bad.jsonl'}:2: not valid JSON"),
        "line not an object": ([], f"{tmp_path / 'bad.jsonl'}:2: got the JSON list [\"good.mp4\", \"fine\"], need an "
                                   "object with \"path\" and \"caption\""),
        "missing manifest": ([], "no such manifest file or folder"),
        "output under a file": ([], "is not writable: Not a directory"),
        "bad override": (["--set", "shard_size=0"], "shard_size: got 0, must be >= 1"),
    }[case]
    if case == "malformed line":
        manifest = tmp_path / "bad.jsonl"
        manifest.write_text('{"path": "good.mp4", "caption": "fine"}\n{"path": "good.mp4", "caption": \n')
    if case == "line not an object":  # JSON, but a list (then a string, a number): was an AttributeError traceback
        manifest = tmp_path / "bad.jsonl"
        manifest.write_text('{"path": "good.mp4", "caption": "fine"}\n["good.mp4", "fine"]\n"good.mp4"\n3\n')
    if case == "missing manifest":
        manifest = tmp_path / "absent.jsonl"
    if case == "output under a file":
        (tmp_path / "a_file").write_text("")
        out = tmp_path / "a_file" / "out"
    result = run_tool("--manifest", str(manifest), "--out", str(out), *args)
    assert result.returncode == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    assert len(lines) == 1 and lines[0].startswith("preencode_latents: error: ") and says in lines[0], result.stderr
    assert not out.exists()


def _hold_finalize_lock(lock: Path, held, release) -> None:
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.set()
        release.wait(120)


def _finalizing_rank(lock: Path):
    """Another process (a rank finalizing) holding `lock` until its `release` event is set: (process, release)."""
    held, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_finalize_lock, args=(lock, held, release), daemon=True)
    holder.start()
    assert held.wait(timeout=60), "the other process did not get the lock"
    return holder, release


def _is_locked(lock: Path) -> bool:
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_finalize_after_a_rewrite_waits_for_a_running_finalize_and_runs_last(three_entries, tmp_path, clips,
                                                                             no_sleep, monkeypatch):
    out = tmp_path / "out"
    run(three_entries, out, shard_size=1)  # shard k holds entry k; with 2 ranks, rank 1 owns shard 1 (later.mp4)
    shutil.copy(clips / "carphone_pristine.mp4", tmp_path / "later.mp4")
    lock = out / ".finalize.lock"
    holder, release = _finalizing_rank(lock)  # rank 0 is finalizing from the shards as they were before the rewrite
    try:
        preencode_module.finalize_once(out, 3)
        assert no_sleep == [] and _is_locked(lock)  # a rank that rewrote nothing leaves it to the lock holder

        def rank0_finishes_after_two_polls(seconds):
            no_sleep.append(seconds)
            if len(no_sleep) == 2:
                release.set()
                holder.join(timeout=60)

        monkeypatch.setattr(preencode_module.time, "sleep", rank0_finishes_after_two_polls)
        rank1 = Preencoder(small_config(shard_size=1), TinyVideoEncoder(),
                           TinyTextEncoders.for_model(load_config("tiny").model), out, rank=1, world_size=2)
        assert rank1.run(read_manifest(three_entries), retry_rejects=True).shards_written == 1
    finally:
        release.set()
        holder.join(timeout=60)
    assert no_sleep == [0.5, 0.5] and not _is_locked(lock)
    assert [r["index"] for r in rejects(out)] == [2]  # finalized after rank 0, from the rewritten shard
    assert json.loads((out / "summary.json").read_text())["samples"] == 2


def test_a_late_rank_0_never_takes_the_lock_of_a_rank_finalizing_and_a_killed_holders_file_blocks_nothing(
        three_entries, tmp_path, no_sleep):
    out = tmp_path / "out"
    run(three_entries, out, shard_size=1)
    lock = out / ".finalize.lock"
    holder, release = _finalizing_rank(lock)  # rank 1 found every shard complete and is finalizing
    try:
        # Rank 0 starts late on the complete folder: before, it unlinked the lock file at start-up (taken for a
        # killed run's leftover), finalized beside rank 1, and rank 1's own unlink then failed.
        rank0 = Preencoder(small_config(shard_size=1), TinyVideoEncoder(),
                           TinyTextEncoders.for_model(load_config("tiny").model), out, rank=0, world_size=2)
        assert rank0.run(read_manifest(three_entries)).shards_written == 0
        assert _is_locked(lock)
    finally:
        release.set()
        holder.join(timeout=60)
    (out / "summary.json").unlink()
    holder = FORK.Process(target=_hold_finalize_lock, args=(lock, FORK.Event(), FORK.Event()), daemon=True)
    holder.start()
    holder.kill()  # a finalizing rank killed: its file stays, its lock goes with it
    holder.join()
    preencode_module.finalize_once(out, 3)
    assert json.loads((out / "summary.json").read_text())["samples"] == 1 and no_sleep == []


def test_finalize_writes_nothing_while_a_shard_is_being_rewritten(three_entries, tmp_path, no_sleep):
    out = tmp_path / "out"
    run(three_entries, out)
    before = (out / "summary.json").read_bytes()
    (out / "index" / "shard-000000.tar.json").unlink()  # what a rewrite looks like from another rank
    assert preencode_module.finalize(out, 2) is None
    assert (out / "summary.json").read_bytes() == before


def _report_pid_and_sleep(folder: str) -> None:
    """A decode worker's task that never ends: it leaves its pid in `folder` and sleeps."""
    (Path(folder) / f"worker-{os.getpid()}").write_text("")
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (PID 1 of a container may never reap it)


def test_decode_workers_die_with_a_killed_pre_encoding_process(tmp_path):
    script = ("import sys\n"
              "from megatron_moviegen.data.preencode import ordered_map\n"
              "from tests.data.test_preencode import small_config\n"
              "from tests.data.test_preencode_faults import _report_pid_and_sleep\n"
              "if __name__ == '__main__':\n"
              "    list(ordered_map(_report_pid_and_sleep, [sys.argv[1]] * 2, small_config(num_workers=2)))\n")
    (tmp_path / "run.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("worker-*"))) < 2:
            assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
            time.sleep(0.2)
        workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
        parent.kill()  # kill -9: no cleanup runs in the parent
        parent.wait()
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _alive(pid)], "decode workers outlived the killed parent"
    finally:
        for pid in [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


class NaNFromCall(TinyVideoEncoder):
    """TinyVideoEncoder whose encodes from the `first`-th call on (0-based) give NaN latents."""

    def __init__(self, first: int):
        super().__init__()
        self.first, self.calls = first, 0

    def encode(self, pixels):
        latents = super().encode(pixels)
        self.calls += 1
        return latents.fill_(float("nan")) if self.calls > self.first else latents


@pytest.fixture
def two_clips(clips, tmp_path) -> Path:
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clips / "carphone_pristine.mp4", tmp_path / name)
    return write_manifest(tmp_path, [{"path": "a.mp4", "caption": "first"}, {"path": "b.mp4", "caption": "second"}])


def test_a_sample_whose_latents_or_embeddings_are_not_finite_is_an_encode_reject(two_clips, tmp_path, monkeypatch):
    out = tmp_path / "out"
    summary = run(two_clips, out, shard_size=1, video_encoder=NaNFromCall(first=1))
    assert (summary.encoded, summary.rejected) == (1, 1)
    [reject] = rejects(out)
    assert (reject["index"], reject["kind"]) == (1, "encode") and reject["path"].endswith("b.mp4")
    assert re.fullmatch(r"the encoders' output is not finite in torch.bfloat16: NaN or inf in latents "
                        r"\((\d+) of \1 values\)", reject["reason"]), reject
    assert [[s["key"] for s in shards_module.ShardIndex.read(out / "index" / f"shard-00000{k}.tar.json").samples]
            for k in (0, 1)] == [["000000000"], []]

    encode = TinyTextEncoders.encode  # now the text encoder: an inf in the second caption's embeddings
    monkeypatch.setattr(TinyTextEncoders, "encode", lambda self, prompts: {
        name: tokens._replace(embeddings=tokens.embeddings.masked_fill(
            torch.tensor(["second" in p for p in prompts]).view(-1, 1, 1), float("inf")))
        for name, tokens in encode(self, prompts).items()})
    run(two_clips, tmp_path / "text", shard_size=1)
    [reject] = rejects(tmp_path / "text")
    assert reject["kind"] == "encode" and "NaN or inf in tokens.ul2.embeddings (" in reject["reason"], reject


def test_an_encoder_that_gives_only_nonfinite_output_stops_the_run_and_the_tool_in_one_line(two_clips, tmp_path):
    with pytest.raises(preencode_module.NonFiniteEncoderError,
                       match=r"^shard shard-000000.tar: all 1 encoded samples are not finite, and none before them "
                             r"in this run was \(first: \S+/a.mp4: the encoders' output is not finite"):
        run(two_clips, tmp_path / "out", shard_size=1, video_encoder=NaNFromCall(first=0))
    assert not list((tmp_path / "out" / "index").glob("*.json"))  # no shard, no rejects.jsonl: nothing published

    tae = TAE(TAEConfig(base_channels=8, channel_multipliers=(1, 1, 1, 1), num_res_blocks=1, norm_groups=4,
                        mid_attention=False))
    with torch.no_grad():
        for parameter in tae.parameters():
            parameter.mul_(1e30)  # the weights a TAE run at train.lr=1e30 leaves: finite, encodes to NaN
    tae.save_pretrained(tmp_path / "diverged_tae")
    result = run_tool("--manifest", str(two_clips), "--out", str(tmp_path / "tool"), "--tae",
                      str(tmp_path / "diverged_tae"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert re.search(r"(^|\n)preencode_latents: error: shard shard-000000.tar: all 2 encoded samples are not "
                     r"finite", result.stderr), result.stderr
