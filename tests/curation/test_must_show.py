"""The issue's must-show run: the bundled clips cut at their true cuts, each bad clip removed by its filter."""

from pathlib import Path

from megatron_moviegen.data.manifest import read_manifest
from tests.curation.conftest import read_jsonl


def by_video(curated: Path) -> dict[str, list[dict]]:
    clips: dict[str, list[dict]] = {}
    for clip in read_jsonl(curated / "clips.jsonl"):
        clips.setdefault(Path(clip["video"]).name, []).append(clip)
    return clips


def test_shots_found_at_the_true_cuts_and_trimmed(footage, curated):
    results = [read_jsonl(p)[0] for p in (curated / "videos").glob("0_cuts-*.json")]
    assert len(results) == 1
    found, truth = results[0]["cuts"], footage.cuts
    assert len(found) == len(truth) and all(abs(f - t) <= 2 for f, t in zip(found, truth)), (found, truth)
    clips = by_video(curated)["0_cuts.mp4"]
    # 8 fps: shots [0, 42), [42, 74), [74, 116) frames -> seconds, 0.25 s trimmed off each end
    assert [(c["start"], c["end"]) for c in clips] == [(0.25, 5.0), (5.5, 9.0), (9.5, 14.25)]


def test_each_bad_clip_is_removed_by_its_filter_and_only_it(footage, curated):
    clips = by_video(curated)
    for name, reason in footage.bad.items():
        (clip,) = clips[name]
        assert clip["removed_by"]["all"] == reason, (name, clip["scores"])
        expected_failures = [] if reason == "duplicate" else [reason]
        assert clip["failed"]["all"] == expected_failures, (name, clip["scores"])
    assert clips["4_duplicate.mp4"][0]["duplicate_of"]["all"] == clips["0_cuts.mp4"][0]["clip"]
    assert [c["removed_by"]["all"] for c in clips["0_cuts.mp4"]] == [None, None, None]


def test_the_stage_manifest_is_what_preencoding_reads(footage, curated):
    entries = read_manifest(curated / "manifest.all.jsonl")
    assert [(Path(e.path).name, e.start_s, e.end_s) for e in entries] == [
        ("0_cuts.mp4", 0.25, 5.0), ("0_cuts.mp4", 5.5, 9.0), ("0_cuts.mp4", 9.5, 14.25)]
    records = read_jsonl(curated / "manifest.all.jsonl")
    assert records[1]["caption"] == "Static camera. a man talking on a car phone while driving"
    assert records[1]["captioner"] == {"name": "sidecar", "file": "0_cuts.1.txt"}
    assert all(c["aesthetic_scorer"] == "absent" and c["scores"]["aesthetic"] is None
               for c in read_jsonl(curated / "clips.jsonl"))
    assert {r["cluster"] for r in records} and abs(sum(r["weight"] for r in records) / 3 - 1) < 1e-3
    # the stricter stage keeps a subset: the carphone shot (sharpness 220) is below its 300
    sharp = read_jsonl(curated / "manifest.sharp.jsonl")
    assert [r["clip"] for r in sharp] == [records[0]["clip"], records[2]["clip"]]
    assert (curated / "report.png").stat().st_size > 10_000
