"""The run around the analysis: resume, shards over ranks, bad inputs, stages re-merged without decoding."""

import filecmp
import shutil
from pathlib import Path

import pytest

from megatron_moviegen.curate import main
from megatron_moviegen.curation import pipeline
from megatron_moviegen.curation.config import load_curation_config
from megatron_moviegen.curation.pipeline import curate, list_videos, result_path
from tests.curation.conftest import read_jsonl

MERGED = ["clips.jsonl", "manifest.all.jsonl", "manifest.sharp.jsonl", "rejected.jsonl", "funnel.json"]


def test_a_run_killed_midway_then_resumed_gives_the_uninterrupted_manifests(footage, small_config, curated,
                                                                             tmp_path, monkeypatch):
    videos = list_videos([footage.folder])
    out = tmp_path / "resumed"
    # a killed run: the even videos done (their result files and thumbnails), a temporary file left behind
    for video in videos[::2]:
        result = result_path(curated, video)
        (out / "videos").mkdir(parents=True, exist_ok=True)
        shutil.copy(result, result_path(out, video))
        for clip in read_jsonl(result)[0]["clips"]:
            (out / clip["thumbnail"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(curated / clip["thumbnail"], out / clip["thumbnail"])
    (out / "videos" / ".1_static-x.json.999.tmp").write_text('{"video": "cut sho')
    analysed = []
    real = pipeline.analyse_video
    monkeypatch.setattr(pipeline, "analyse_video", lambda v, c, o: analysed.append(v) or real(v, c, o))
    curate([footage.folder], out, small_config)
    assert analysed == videos[1::2]
    for name in MERGED:
        assert filecmp.cmp(out / name, curated / name, shallow=False), name


def test_ranks_analyse_disjoint_slices_and_rank_0_waits_for_all(footage, small_config, tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(pipeline, "analyse_video", lambda v, c, o: seen.setdefault(v, {"settings": None}))
    monkeypatch.setattr(pipeline, "done", lambda out, video, config: video in seen)
    videos = list_videos([footage.folder])
    assert curate([footage.folder], tmp_path, small_config, rank=1, world=3) is None
    assert list(seen) == videos[1::3]
    with pytest.raises(TimeoutError, match=r"2 of 8 videos have no result after 0 s"):
        curate([footage.folder], tmp_path, small_config, rank=0, world=3, wait_s=0.0)
    assert sorted(seen) == sorted(videos[1::3] + videos[0::3])


def test_bad_inputs_are_rejected_with_a_reason_and_cost_nothing_else(footage, tmp_path, capsys):
    import av

    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(footage.folder / "1_static.mp4", folder / "good.mp4")
    (folder / "not_a_video.mp4").write_text("hello")
    (folder / "empty.mp4").write_bytes(b"")
    with av.open(str(folder / "no_frames.mp4"), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    out = tmp_path / "out"
    assert main([str(folder), "--out", str(out), "--recipe", "small"]) == 0
    rejected = {Path(r["video"]).name: r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert sorted(rejected) == ["empty.mp4", "no_frames.mp4", "not_a_video.mp4"]
    assert "cannot open (" in rejected["empty.mp4"] and "Invalid data" in rejected["not_a_video.mp4"]
    assert rejected["no_frames.mp4"].endswith("has no video stream")
    (clip,) = read_jsonl(out / "clips.jsonl")
    assert Path(clip["video"]).name == "good.mp4" and clip["removed_by"]["all"] == "static"


def test_new_thresholds_re_merge_the_recorded_scores_without_decoding(curated, footage, tmp_path, monkeypatch):
    out = tmp_path / "again"
    shutil.copytree(curated, out)
    monkeypatch.setattr(pipeline, "scan_video", lambda *a: pytest.fail("decoded a video again"))
    looser = load_curation_config("small", ["thresholds.max_text=0.5"])
    funnels = curate([footage.folder], out, looser)
    assert funnels["all"]["text"] == 0 and funnels["all"]["out"] == 4
    assert read_jsonl(out / "manifest.all.jsonl")[3]["path"].endswith("2_text.mp4")


def test_cli_prints_the_recipe_and_names_a_bad_override(capsys):
    assert main(["x", "--out", "y", "--recipe", "small", "--print-config"]) == 0
    assert "min_short_side: 128" in capsys.readouterr().out
    assert main(["x", "--out", "y", "shots.min_s=-1"]) == 2
    assert "min_s, max_s: got -1" in capsys.readouterr().err
