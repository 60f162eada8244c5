"""The procedural world (data/world.py) and its analysers (data/world_analysis.py): deterministic scenes that exist at
any fps, held-out splits that hold, and analysers that read colour, shape, direction, speed, camera pan and sound
onsets back from rendered, H.264-encoded files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.audio import read_audio
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.world import (
    HELD_OUT,
    HELD_OUT_CHARACTERS,
    SAMPLE_RATE,
    Scene,
    WorldSpec,
    edit,
    render,
    sample_scene,
    scene_seed,
    write_world,
)
from megatron_moviegen.data.world_analysis import camera_pan, find_objects, onsets, score_scene
from megatron_moviegen.utils.video_io import read_frames, to_uint8_frames

torch.set_num_threads(1)


def test_a_scene_is_one_continuous_world_at_any_fps_and_seed_determined():
    scene = sample_scene(random.Random(scene_seed("train", 3)), objects=2)
    assert scene == sample_scene(random.Random(scene_seed("train", 3)), objects=2)
    at16, at24 = render(scene, 16, 1.0, 32, 32), render(scene, 24, 1.0, 32, 32)
    assert at16.shape == (3, 16, 32, 32) and at24.shape == (3, 24, 32, 32)
    assert torch.equal(at16[:, 8], at24[:, 12])  # t = 0.5 s in both
    with pytest.raises(ValueError, match=r"render: 32x64 is 2.000 wide per unit of height, the scene's world 1.000"):
        render(scene, 16, 1.0, 32, 64)


def test_held_out_triples_never_reach_training_though_each_part_does():
    train = [sample_scene(random.Random(scene_seed("train", i)), "train", objects=2) for i in range(150)]
    held = [sample_scene(random.Random(scene_seed("heldout", i)), "heldout", objects=2) for i in range(30)]
    triples = {(o.colour, o.shape, o.direction) for s in train for o in s.objects}
    assert not triples & HELD_OUT
    assert all((s.objects[0].colour, s.objects[0].shape, s.objects[0].direction) in HELD_OUT for s in held)
    for colour, shape, direction in HELD_OUT:  # every part of every held-out triple is trained on
        assert any(c == colour for c, _, _ in triples) and any(s == shape for _, s, _ in triples)
        assert any(d == direction for _, _, d in triples)
    assert scene_seed("train", 0) != scene_seed("heldout", 0)


def test_analysers_read_colour_shape_direction_and_speed_back_from_encoded_videos(tmp_path):
    manifest = write_world(tmp_path, WorldSpec(count=6, objects=2, height=64, width=64), progress=False)
    truths = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    rows = [row for truth in truths
            for row in score_scene(read_frames(tmp_path / truth["path"]), Scene.from_dict(truth["scene"]), 16)]
    assert len(rows) == 12 and all(r["present"] and r["shape"] and r["direction"] for r in rows), rows
    assert all(abs(r["speed"] / r["true_speed"] - 1) < 0.15 for r in rows), [(r["speed"], r["true_speed"]) for r in rows]
    entries = read_manifest(manifest)  # the project's own manifest reader
    assert [e.caption for e in entries] == [Scene.from_dict(t["scene"]).caption() for t in truths]
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.mp4")}
    assert write_world(tmp_path, WorldSpec(count=6, objects=2), progress=False).read_text() == manifest.read_text()
    assert stamps == {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.mp4")}  # a rerun renders nothing again


def test_the_camera_pan_is_read_from_the_background():
    scene = sample_scene(random.Random(5))
    left, right = (render(Scene(scene.objects, "grey", camera), 16, 1.0, 64, 64) for camera in ("pans left",
                                                                                                   "pans right"))
    frames = [to_uint8_frames(v) for v in (left, right)]
    assert camera_pan(frames[0]) < -0.003 < 0.003 < camera_pan(frames[1])  # the view goes left: the picture right


def test_sound_onsets_match_the_collisions(tmp_path):
    write_world(tmp_path, WorldSpec(count=2, objects=2, seconds=3.0, audio=True), progress=False)
    for truth in map(json.loads, (tmp_path / "truth.jsonl").read_text().splitlines()):
        waveform = read_audio(str(tmp_path / truth["path"]), SAMPLE_RATE, 1).numpy()
        found = onsets(waveform, SAMPLE_RATE)
        expected = sorted({round(t, 3) for t, _ in truth["collisions"]})
        assert len(found) == len(expected) >= 1, (found, expected)
        errors = [min(abs(f - e) for f in found) for e in expected]
        assert np.median(errors) < 0.015, errors


def test_edits_change_only_what_the_instruction_says(tmp_path):
    scene = sample_scene(random.Random(11), objects=2)
    recoloured, instruction = edit(scene, "recolour", random.Random(0))
    changed = [(a.colour, b.colour) for a, b in zip(scene.objects, recoloured.objects) if a != b]
    assert len(changed) == 1 and instruction.startswith(f"make the {changed[0][0]} ")
    before, after = (find_objects(to_uint8_frames(render(s, 16, 0.5, 48, 48))) for s in (scene, recoloured))
    assert changed[0][0] in before and changed[0][0] not in after and changed[0][1] in after
    flipped, instruction = edit(scene, "flip", random.Random(0))
    assert instruction == "flip the video horizontally"
    assert torch.equal(render(flipped, 16, 0.5, 48, 48), render(scene, 16, 0.5, 48, 48).flip(-1))
    marked, instruction = edit(scene, "segment", random.Random(0))  # the object's exact mask, painted
    changed = [(a, b) for a, b in zip(scene.objects, marked.objects) if a != b]
    assert len(changed) == 1 and instruction == f"mark the {changed[0][0].colour} {changed[0][0].shape} in " \
        f"{changed[0][1].colour}" and changed[0][1].character is None
    removed, _ = edit(scene, "remove", random.Random(0))  # the same object taken out: its footprint changes
    source = render(scene, 16, 0.5, 48, 48)
    painted, footprint = ((render(s, 16, 0.5, 48, 48) != source).any(0) for s in (marked, removed))
    assert footprint.sum() > 20 and torch.equal(painted, footprint)  # exactly the object's pixels, every frame
    manifest = write_world(tmp_path, WorldSpec(count=2, objects=2, edits=("remove", "segment")), progress=False)
    first, second = read_manifest(manifest)
    assert first.source.endswith("-source.mp4") and first.caption.startswith("remove the ")
    assert (first.task, second.task) == ("video_edit", "video_segmentation") and second.caption.startswith("mark the ")


def test_characters_come_with_their_reference_and_the_held_out_one_only_in_held_out_scenes(tmp_path):
    write_world(tmp_path / "train", WorldSpec(count=4, characters=True), progress=False)
    write_world(tmp_path / "heldout", WorldSpec(count=2, split="heldout", characters=True), progress=False)
    train, held = (read_manifest(tmp_path / s / "manifest.jsonl") for s in ("train", "heldout"))
    assert not {e.subject for e in train} & HELD_OUT_CHARACTERS and {e.subject for e in held} == HELD_OUT_CHARACTERS
    assert all(e.reference.endswith(f"reference-{e.subject}.png") and e.caption.startswith(e.subject) for e in held)
    assert read_frames(held[0].reference).shape == (1, 64, 64, 3)


def test_a_bad_spec_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="world.cameras: got \\['spins'\\]"):
        WorldSpec(count=1, cameras=("spins",)).validate()
    with pytest.raises(ConfigError, match="'remove' needs objects >= 2"):
        WorldSpec(count=1, edits=("remove",)).validate()
