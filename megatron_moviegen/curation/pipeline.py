"""`moviegen-curate`'s run: each rank analyses its slice of the input videos (every `world`-th, from `rank`) and
writes one result file per video atomically (`<out>/videos/<key>.json`), so a re-run, after a kill, skips the
videos already done; then rank 0 merges the results into the stage manifests and the report.

A video that cannot be decoded (not a video, empty, no frames) gets a result file with the reason
(`"rejected"`) and costs nothing else. Outputs of the merge, all atomic:
    clips.jsonl            every clip: source, window, scores, camera motion, caption, per stage why removed
    manifest.<stage>.jsonl each stage's kept clips, readable by pre-encoding (path, caption, start, end, ...)
    rejected.jsonl         videos rejected, with the reason
    funnel.json            per stage: clips in, removed by each filter, out; the scores' units
    report.png             funnel, score histograms, contact sheet (report.py)
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from megatron_moviegen.curation.balance import frame_embedding
from megatron_moviegen.curation.camera import camera_motion
from megatron_moviegen.curation.captions import clip_caption
from megatron_moviegen.curation.config import CurationConfig
from megatron_moviegen.curation.dedup import frame_hashes
from megatron_moviegen.curation.filters import (SCORES, border_fraction, evenly_spaced, load_scorer, sharpness,
                                                text_fraction)
from megatron_moviegen.curation.motion import Motion, clip_motion
from megatron_moviegen.curation.shots import ScannedVideo, clip_windows, scan_video, shot_windows
from megatron_moviegen.curation.stages import manifest_record, run_stage
from megatron_moviegen.data.decode import VIDEO_SUFFIXES, DecodeError, MediaReadError
from megatron_moviegen.utils.io import atomic_output, atomic_write_text, read_json_file

THUMBNAIL_HEIGHT = 72


def list_videos(inputs: list[str | Path]) -> list[Path]:
    """Files named directly, and files with a video suffix under folders (recursively); sorted, each once."""
    found = set()
    for item in map(Path, inputs):
        if item.is_dir():
            found.update(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        elif item.exists():
            found.add(item)
        else:
            raise FileNotFoundError(f"input {str(item)!r}: no such file or folder")
    return sorted(p.absolute() for p in found)


def video_key(path: Path) -> str:
    """A result file's name for `path`: its stem and 10 hex digits of the absolute path's SHA-1."""
    return f"{path.stem}-{hashlib.sha1(str(path.absolute()).encode()).hexdigest()[:10]}"


def clip_scores(frames: np.ndarray, times: np.ndarray, scan: ScannedVideo,
                config: CurationConfig) -> tuple[dict, Motion]:
    """Every score of one clip's samples (t, h, w, 3) uint8 (units in filters.SCORES), and its motion."""
    motion = clip_motion(frames, times, config.analysis.flow_width)
    scorer = load_scorer(config.analysis.aesthetic)
    return {
        "short_side": min(scan.info.height, scan.info.width),
        "aspect": round(scan.info.width / scan.info.height, 4),
        "border": round(border_fraction(frames), 4),
        "text": round(text_fraction(evenly_spaced(frames, config.analysis.ocr_frames)), 4),
        "sharpness": round(sharpness(frames), 2),
        "motion": round(motion.motion, 5),
        "jitter": round(motion.jitter, 5),
        "aesthetic": None if scorer is None else round(float(scorer(frames)), 4),
    }, motion


def analyse_clip(video: Path, number: int, window: tuple[float, float], scan: ScannedVideo,
                 config: CurationConfig, out: Path) -> dict:
    """One clip's record; its middle sample is written as the report's thumbnail."""
    start, end = window
    frames, times = scan.clip_samples(start, end)
    scores, motion = clip_scores(frames, times, scan, config)
    caption, captioner = clip_caption(video, number, frames, config.analysis)
    clip_id = f"{video_key(video)}.{number}"
    thumbnail = Path("thumbs") / f"{clip_id}.jpg"
    middle = frames[len(frames) // 2]
    with atomic_output(out / thumbnail) as tmp:
        width = round(middle.shape[1] * THUMBNAIL_HEIGHT / middle.shape[0])
        Image.fromarray(middle).resize((width, THUMBNAIL_HEIGHT), Image.BILINEAR).save(tmp, format="JPEG")
    return {
        "clip": clip_id, "video": str(video), "start": start, "end": end, "scores": scores,
        "camera_motion": camera_motion(motion, config.camera),
        "camera": {"pan": round(motion.pan, 5), "tilt": round(motion.tilt, 5), "zoom": round(motion.zoom, 5)},
        "hashes": frame_hashes(frames, config.analysis.hash_frames), "embedding": frame_embedding(frames),
        "caption": caption, "captioner": captioner,
        "aesthetic_scorer": config.analysis.aesthetic or "absent", "thumbnail": str(thumbnail),
    }


def analyse_video(video: Path, config: CurationConfig, out: Path) -> dict:
    """A video's result: its shots and clips with scores, or `rejected` with the reason it cannot be read."""
    record = {"video": str(video), "settings": config.analysis_record()}
    try:
        scan = scan_video(video, config.shots, config.analysis)
    except (DecodeError, MediaReadError) as exc:
        return {**record, "rejected": str(exc)}
    shots = shot_windows(scan)
    windows = [window for shot in shots for window in clip_windows(shot, config.shots)]
    info = scan.info
    return {
        **record, "rejected": None, "width": info.width, "height": info.height, "fps": info.fps,
        "frames": len(scan.frame_times), "cuts": scan.cuts, "shots": [list(s) for s in shots],
        "short_shots": sum(not clip_windows(shot, config.shots) for shot in shots),
        "clips": [analyse_clip(video, i, window, scan, config, out) for i, window in enumerate(windows)],
    }


def result_path(out: Path, video: Path) -> Path:
    return out / "videos" / f"{video_key(video)}.json"


def done(out: Path, video: Path, config: CurationConfig) -> bool:
    """Whether `video` has a result made with the current analysis settings."""
    path = result_path(out, video)
    return path.is_file() and read_json_file(path, "curation result")["settings"] == config.analysis_record()


def analyse_slice(videos: list[Path], config: CurationConfig, out: Path, rank: int = 0, world: int = 1) -> int:
    """Analyse this rank's videos that have no result yet; returns how many were analysed."""
    todo = [v for v in videos[rank::world] if not done(out, v, config)]
    for video in tqdm(todo, desc=f"curating (rank {rank})", unit="video", disable=rank != 0):
        atomic_write_text(result_path(out, video), json.dumps(analyse_video(video, config, out)) + "\n")
    return len(todo)


def wait_for_results(videos: list[Path], out: Path, config: CurationConfig, wait_s: float) -> None:
    """Block until every video has a result (the other ranks' slices), or raise after `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while missing := [v for v in videos if not done(out, v, config)]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(missing)} of {len(videos)} videos have no result after {wait_s:.0f} s "
                               f"(first: {missing[0]}); run again to finish them")
        time.sleep(2.0)


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def merge(videos: list[Path], config: CurationConfig, out: Path) -> dict[str, dict[str, int]]:
    """The results of `videos` (in order) -> clips.jsonl, manifest.<stage>.jsonl, rejected.jsonl, funnel.json,
    report.png. Returns each stage's funnel."""
    from megatron_moviegen.curation.report import write_report

    results = [read_json_file(result_path(out, v), "curation result") for v in videos]
    rejected = [{"video": r["video"], "reason": r["rejected"]} for r in results if r["rejected"]]
    clips = [clip for r in results if not r["rejected"] for clip in r["clips"]]
    stages = {name: run_stage(clips, t, config.balance) for name, t in config.stage_thresholds().items()}
    for name, stage in stages.items():
        kept = [manifest_record(clips[i], stage.weights[i], stage.clusters[i]) for i in stage.weights]
        atomic_write_text(out / f"manifest.{name}.jsonl", jsonl(kept))
    for i, clip in enumerate(clips):
        clip["removed_by"] = {name: stage.removed_by[i] for name, stage in stages.items()}
        clip["failed"] = {name: stage.failed[i] for name, stage in stages.items()}
        clip["duplicate_of"] = {name: clips[d]["clip"] for name, stage in stages.items()
                                if (d := stage.duplicate_of[i]) is not None}
    atomic_write_text(out / "clips.jsonl", jsonl(clips))
    atomic_write_text(out / "rejected.jsonl", jsonl(rejected))
    funnels = {name: {"videos": len(videos), "videos_rejected": len(rejected),
                      "short_shots": sum(r.get("short_shots", 0) for r in results), **stage.funnel()}
               for name, stage in stages.items()}
    atomic_write_text(out / "funnel.json", json.dumps({**funnels, "score_units": SCORES}, indent=2) + "\n")
    write_report(out / "report.png", clips, funnels, config)
    return funnels


def curate(inputs: list[str | Path], out: str | Path, config: CurationConfig, rank: int = 0, world: int = 1,
           wait_s: float = 3600.0) -> Optional[dict[str, dict[str, int]]]:
    """Analyse this rank's slice, then on rank 0 wait for the others and merge; returns the funnels (rank 0)."""
    out = Path(out)
    videos = list_videos(inputs)
    if not videos:
        raise ValueError(f"inputs {[str(i) for i in inputs]}: no videos (suffixes {', '.join(VIDEO_SUFFIXES)})")
    analyse_slice(videos, config, out, rank, world)
    if rank != 0:
        return None
    wait_for_results(videos, out, config, wait_s)
    return merge(videos, config, out)
