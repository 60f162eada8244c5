"""A procedural world whose truth is known (issue 33): coloured shapes moving with simple physics over a gridded
background, a camera that holds, pans or zooms, captions from a grammar that says what happens, a soundtrack where each
collision rings at its object's pitch, named characters for personalization and edit pairs by instruction. A scene is
continuous in time and space, so the same scene renders at any fps, duration and resolution.

    rng = random.Random(7)
    scene = sample_scene(rng, split="train")               # never a held-out (colour, shape, direction) triple
    video = render(scene, fps=16, seconds=2.0, height=64, width=64)   # (3, t, h, w) in [-1, 1]
    scene.caption()    # "A small red triangle moving left slowly, on a dark background. The camera is still."
    soundtrack(scene, seconds=2.0)                          # (1, n) at 48 kHz: a ring per collision

Units: the world is 1 high and `aspect` wide; positions and radii are in world units, velocities in world units per
second, times in seconds. Held-out splits (`HELD_OUT`, `HELD_OUT_CHARACTERS`, seed streams) keep combinations the
model never trains on, so a generated video can be scored on what it could not have memorized
(`data/world_analysis.py` reads colour, shape, direction, speed and sound onsets back).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

import torch

COLOURS = {  # saturated and far apart in hue, so a pixel's colour names its object (analysis)
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 225),
    "yellow": (235, 205, 30), "purple": (150, 50, 190), "orange": (245, 130, 20),
}
SHAPES = ("square", "circle", "triangle")
SIZES = {"small": 0.11, "large": 0.19}  # half-width (radius) in world units
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEEDS = {"slowly": 0.12, "quickly": 0.3}  # world units per second
BACKGROUNDS = {"grey": (115, 115, 115), "dark": (40, 40, 50), "light": (205, 205, 195)}
CAMERAS = ("is still", "pans left", "pans right", "zooms in", "zooms out")
PAN_SPEED, ZOOM_RATE = 0.12, 0.25  # world units per second; log-zoom per second
PITCH_HZ = {"square": 330.0, "circle": 523.25, "triangle": 784.0}  # a collision rings at its object's pitch
SAMPLE_RATE = 48_000
SIM_HZ = 480  # physics steps per second; frames are sampled from this continuous-enough track

# Combinations never trained on; each colour, shape and direction on its own is (issue 33, held-out splits).
HELD_OUT = frozenset({("red", "triangle", "left"), ("blue", "square", "up"), ("green", "circle", "right"),
                      ("yellow", "triangle", "down"), ("purple", "circle", "left"), ("orange", "square", "right")})


@dataclass(frozen=True)
class Character:
    """A named, textured object (personalization): two-colour stripes or checks the plain objects never have."""

    name: str
    shape: str
    colours: tuple[str, str]
    texture: Literal["stripes", "checks"]


CHARACTERS = {c.name: c for c in (Character("Zig", "square", ("yellow", "purple"), "stripes"),
                                   Character("Pax", "circle", ("green", "orange"), "checks"),
                                   Character("Lumo", "triangle", ("blue", "yellow"), "stripes"))}
HELD_OUT_CHARACTERS = frozenset({"Lumo"})
SEED_STREAMS = {"train": 0, "heldout": 1_000_000}  # scene i of a split renders from seed stream + i


@dataclass(frozen=True)
class WorldObject:
    colour: str
    shape: str
    size: str
    direction: str
    speed: str
    x: float  # start centre, world units
    y: float
    character: Optional[str] = None  # a Character's name: drawn with its texture, named in captions

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def velocity(self) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return dx * SPEEDS[self.speed], dy * SPEEDS[self.speed]

    def phrase(self) -> str:
        motion = f"moving {self.direction} {self.speed}"
        if self.character is not None:
            return f"{self.character} {motion}"
        return f"a {self.size} {self.colour} {self.shape} {motion}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[WorldObject, ...]
    background: str = "grey"
    camera: str = "is still"
    aspect: float = 1.0  # world width / height
    flipped: bool = False  # mirrored left-right (an edit)

    def caption(self) -> str:
        """What happens, from the grammar: objects (motion at the start), background, camera."""
        things = " and ".join(o.phrase() for o in self.objects)
        text = f"{things[0].upper()}{things[1:]}, on a {self.background} background. The camera {self.camera}."
        return text + (" Mirrored." if self.flipped else "")

    def to_dict(self) -> dict:
        return {"objects": [o.__dict__ for o in self.objects], "background": self.background, "camera": self.camera,
                "aspect": self.aspect, "flipped": self.flipped}

    @classmethod
    def from_dict(cls, record: dict) -> "Scene":
        return cls(tuple(WorldObject(**o) for o in record["objects"]), record["background"], record["camera"],
                   record["aspect"], record.get("flipped", False))


@dataclass
class Motion:
    """A scene simulated: centres (steps + 1, objects, 2) at SIM_HZ and its collisions (time s, object index)."""

    centres: torch.Tensor
    collisions: list[tuple[float, int]] = field(default_factory=list)

    def at(self, times: torch.Tensor) -> torch.Tensor:
        """Centres at `times` (t,) seconds, linearly interpolated: (t, objects, 2)."""
        position = (times.double() * SIM_HZ).clamp(0, self.centres.shape[0] - 1)
        low = position.floor().long().clamp(max=self.centres.shape[0] - 2)
        frac = (position - low)[:, None, None]
        return self.centres[low] * (1 - frac) + self.centres[low + 1] * frac


def simulate(scene: Scene, seconds: float) -> Motion:
    """Straight lines, elastic bounces off the walls and between objects (as discs of equal mass)."""
    steps, dt = max(1, math.ceil(seconds * SIM_HZ)), 1.0 / SIM_HZ
    pos = [[o.x, o.y] for o in scene.objects]
    vel = [list(o.velocity) for o in scene.objects]
    radius = [o.radius for o in scene.objects]
    upper = (scene.aspect, 1.0)
    centres, collisions = [[p[:] for p in pos]], []
    for step in range(1, steps + 1):
        for k, (p, v) in enumerate(zip(pos, vel)):
            for axis in range(2):
                p[axis] += v[axis] * dt
                if (p[axis] < radius[k] and v[axis] < 0) or (p[axis] > upper[axis] - radius[k] and v[axis] > 0):
                    v[axis] = -v[axis]
                    collisions.append((step * dt, k))
        for i in range(len(pos)):
            for j in range(i + 1, len(pos)):
                nx, ny = pos[j][0] - pos[i][0], pos[j][1] - pos[i][1]
                distance = math.hypot(nx, ny)
                closing = (vel[j][0] - vel[i][0]) * nx + (vel[j][1] - vel[i][1]) * ny < 0
                if 0 < distance < radius[i] + radius[j] and closing:
                    nx, ny = nx / distance, ny / distance
                    along = (vel[i][0] - vel[j][0]) * nx + (vel[i][1] - vel[j][1]) * ny
                    vel[i] = [vel[i][0] - along * nx, vel[i][1] - along * ny]
                    vel[j] = [vel[j][0] + along * nx, vel[j][1] + along * ny]
                    collisions += [(step * dt, i), (step * dt, j)]
        centres.append([p[:] for p in pos])
    return Motion(torch.tensor(centres, dtype=torch.float64), collisions)


def _camera(scene: Scene, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(centre x, centre y, zoom) of the view at `times` (t,) seconds, each (t,): it starts on the whole world."""
    t = times.float()
    cx, cy, zoom = torch.full_like(t, scene.aspect / 2), torch.full_like(t, 0.5), torch.ones_like(t)
    if scene.camera == "pans left":
        cx = cx - PAN_SPEED * t
    elif scene.camera == "pans right":
        cx = cx + PAN_SPEED * t
    elif scene.camera == "zooms in":
        zoom = torch.exp(ZOOM_RATE * t)
    elif scene.camera == "zooms out":
        zoom = torch.exp(-ZOOM_RATE * t)
    elif scene.camera != "is still":
        raise ValueError(f"camera: got {scene.camera!r}, expected one of {CAMERAS}")
    return cx, cy, zoom


def _rgb(name: str, table: dict) -> torch.Tensor:
    return torch.tensor(table[name], dtype=torch.float32) / 127.5 - 1.0


def _inside(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: float) -> torch.Tensor:
    """Which points (dx, dy) from a centre lie in the shape of half-width r (a triangle points up)."""
    if shape == "square":
        return (dx.abs() <= r) & (dy.abs() <= r)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "triangle":  # apex (0, -r), base y = +r from x = -r to +r
        return (dy <= r) & (2 * dx.abs() <= (dy + r))
    raise ValueError(f"shape: got {shape!r}, expected one of {SHAPES}")


def render(scene: Scene, fps: float, seconds: float, height: int, width: int,
           motion: Optional[Motion] = None) -> torch.Tensor:
    """The scene as a video (3, t, height, width) in [-1, 1], t = round(seconds * fps) frames (1: a still image at t=0).
    Each pixel is sampled at 2 x 2 points (antialiased edges)."""
    if abs(width / height - scene.aspect) > 0.02 * scene.aspect:
        raise ValueError(f"render: {height}x{width} is {width / height:.3f} wide per unit of height, the scene's "
                         f"world {scene.aspect:.3f}; render at its aspect or sample the scene with aspect={width / height:.3f}")
    frames = max(1, round(seconds * fps))
    motion = motion or simulate(scene, seconds)
    times = torch.arange(frames, dtype=torch.float64) / fps
    centres = motion.at(times).float()  # (t, objects, 2)
    sub = 2
    ys = (torch.arange(height * sub, dtype=torch.float32) + 0.5) / (height * sub)
    xs = (torch.arange(width * sub, dtype=torch.float32) + 0.5) / (width * sub)
    cx, cy, zoom = (v.view(-1, 1, 1) for v in _camera(scene, times))
    wx = cx + (xs.view(1, 1, -1) - 0.5) * scene.aspect / zoom  # (t, 1, W) world x of each sample
    wy = cy + (ys.view(1, -1, 1) - 0.5) / zoom  # (t, H, 1)
    wx, wy = torch.broadcast_tensors(wx, wy)  # (t, H, W)
    lines = ((wx * 10).remainder(1) < 0.06) | ((wy * 10).remainder(1) < 0.06)  # a grid every 0.1: motion shows
    shade = 0.12 * (1 if scene.background == "dark" else -1)
    image = _rgb(scene.background, BACKGROUNDS).view(3, 1, 1, 1) + shade * lines.float()[None]  # (3, t, H, W)
    for k, obj in enumerate(scene.objects):
        dx, dy = wx - centres[:, k, 0].view(-1, 1, 1), wy - centres[:, k, 1].view(-1, 1, 1)
        image = torch.where(_inside(obj.shape, dx, dy, obj.radius)[None], _object_colour(obj, dx, dy), image)
    image = image.view(3, frames, height, sub, width, sub).mean(dim=(3, 5))
    return (image.flip(-1) if scene.flipped else image).clamp(-1.0, 1.0)


def _object_colour(obj: WorldObject, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """(3, *dx.shape) colour of the object's surface at offsets (dx, dy): plain, or its character's texture."""
    view = (3,) + (1,) * dx.dim()
    if obj.character is None:
        return _rgb(obj.colour, COLOURS).view(view).expand(3, *dx.shape)
    character = CHARACTERS[obj.character]
    period = obj.radius / 2
    if character.texture == "stripes":
        second = ((dx + dy) / period).floor().remainder(2) == 1
    else:
        second = ((dx / period).floor() + (dy / period).floor()).remainder(2) == 1
    first, other = (_rgb(name, COLOURS).view(view) for name in character.colours)
    return torch.where(second, other, first)


def soundtrack(scene: Scene, seconds: float, motion: Optional[Motion] = None,
               sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(1, n) in [-1, 1]: a 0.12 s decaying ring at each collision, pitched by the object's shape."""
    motion = motion or simulate(scene, seconds)
    n = round(seconds * sample_rate)
    audio = torch.zeros(n, dtype=torch.float64)
    ring = torch.arange(round(0.12 * sample_rate), dtype=torch.float64) / sample_rate
    envelope = torch.exp(-ring / 0.03) * 0.5
    for time_s, k in motion.collisions:
        start = round(time_s * sample_rate)
        if start >= n:
            continue
        tone = envelope * torch.sin(2 * math.pi * PITCH_HZ[scene.objects[k].shape] * ring)
        end = min(n, start + len(tone))
        audio[start:end] += tone[: end - start]
    return audio.clamp(-1.0, 1.0).float()[None]


Split = Literal["train", "heldout"]


def _object(rng: random.Random, colour: str, shape: str, direction: str, aspect: float,
            character: Optional[str] = None) -> WorldObject:
    size, speed = rng.choice(sorted(SIZES)), rng.choice(sorted(SPEEDS))
    r = SIZES[size]
    return WorldObject(colour, shape, size, direction, speed, rng.uniform(r, aspect - r), rng.uniform(r, 1 - r),
                       character)


def sample_scene(rng: random.Random, split: Split = "train", objects: int = 1, seconds: float = 2.0,
                 aspect: float = 1.0, cameras: tuple[str, ...] = ("is still",), character: bool = False,
                 bounces: bool = False, tries: int = 200) -> Scene:
    """A random scene of `objects` objects in distinct colours. train: no object is a HELD_OUT (colour, shape,
    direction) triple (nor a held-out character); heldout: the first object is one (or a held-out character).
    bounces=False keeps every object on its first heading for `seconds` (no collision, so its direction is the
    caption's); True asks for at least one collision (the soundtrack rings). `character`: the first object is a
    named character (personalization)."""
    for _ in range(tries):
        colours = rng.sample(sorted(COLOURS), objects)
        chosen = []
        for i, colour in enumerate(colours):
            if i == 0 and character:
                names = sorted(HELD_OUT_CHARACTERS if split == "heldout" else set(CHARACTERS) - HELD_OUT_CHARACTERS)
                c = CHARACTERS[rng.choice(names)]
                chosen.append(_object(rng, c.colours[0], c.shape, rng.choice(sorted(DIRECTIONS)), aspect, c.name))
                continue
            if i == 0 and split == "heldout" and not character:
                colour, shape, direction = rng.choice(sorted(HELD_OUT))
            else:
                shape, direction = rng.choice(SHAPES), rng.choice(sorted(DIRECTIONS))
                if (colour, shape, direction) in HELD_OUT:
                    break
            chosen.append(_object(rng, colour, shape, direction, aspect))
        if len(chosen) != objects or len({o.colour for o in chosen}) != objects or _overlapping(chosen):
            continue
        scene = Scene(tuple(chosen), rng.choice(sorted(BACKGROUNDS)), rng.choice(cameras), aspect)
        if bool(simulate(scene, seconds).collisions) == bounces:
            return scene
    raise RuntimeError(f"no {split} scene of {objects} object(s) with bounces={bounces} in {tries} tries; "
                       "use fewer objects or a shorter duration")


def _overlapping(objects: list[WorldObject]) -> bool:
    return any(math.hypot(a.x - b.x, a.y - b.y) < 1.2 * (a.radius + b.radius)
               for i, a in enumerate(objects) for b in objects[i + 1:])


def scene_seed(split: Split, index: int, seed: int = 0) -> int:
    """The seed of scene `index` of a split: the train and held-out streams never meet (unseen seeds)."""
    return seed * 10_000_019 + SEED_STREAMS[split] + index


EDITS = ("recolour", "remove", "flip", "segment")
# The edit task each is trained as (data.edit.tasks): "segment" is the paper's generative instruction-guided
# segmentation, the object's exact mask (known here, not estimated) painted in a colour.
EDIT_TASKS = {"recolour": "video_edit", "remove": "video_edit", "flip": "video_edit", "segment": "video_segmentation"}


def edit(scene: Scene, kind: str, rng: random.Random) -> tuple[Scene, str]:
    """(the edited scene, its instruction): recolour or remove one object, mirror the video, or mark one object
    (segmentation: its whole mask painted in one plain colour, texture included); only what the instruction says
    changes."""
    target = rng.randrange(len(scene.objects))
    obj = scene.objects[target]
    if kind == "recolour":
        new = rng.choice(sorted(set(COLOURS) - {o.colour for o in scene.objects}))
        objects = tuple(replace(o, colour=new) if i == target else o for i, o in enumerate(scene.objects))
        return replace(scene, objects=objects), f"make the {obj.colour} {obj.shape} {new}"
    if kind == "remove":
        if len(scene.objects) < 2:
            raise ValueError("remove: the scene needs at least two objects (one stays)")
        objects = tuple(o for i, o in enumerate(scene.objects) if i != target)
        return replace(scene, objects=objects), f"remove the {obj.colour} {obj.shape}"
    if kind == "flip":
        return replace(scene, flipped=not scene.flipped), "flip the video horizontally"
    if kind == "segment":
        mark = rng.choice(sorted(set(COLOURS) - {o.colour for o in scene.objects}))
        objects = tuple(replace(o, colour=mark, character=None) if i == target else o
                        for i, o in enumerate(scene.objects))
        return replace(scene, objects=objects), f"mark the {obj.colour} {obj.shape} in {mark}"
    raise ValueError(f"edit: got {kind!r}, expected one of {EDITS}")


def character_reference(name: str, size: int = 64) -> torch.Tensor:
    """The character alone, centred and still, on the grey background: (3, 1, size, size) in [-1, 1]."""
    c = CHARACTERS[name]
    obj = WorldObject(c.colours[0], c.shape, "large", "right", "slowly", 0.5, 0.5, c.name)
    return render(Scene((replace(obj, speed="slowly"),), "grey"), fps=1.0, seconds=1.0, height=size, width=size,
                  motion=Motion(torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]], dtype=torch.float64)))


@dataclass
class WorldSpec:
    """What `write_world` renders: `count` scenes of one split, each `seconds` long at `fps` and height x width (fps 0:
    still images, .png). audio: a soundtrack muxed into each .mp4 (scenes with collisions); edits: source/target pairs
    by instruction (the manifest's `source`, the instruction as caption); characters: the first object is a named
    character and the entry's `reference` its reference image."""

    count: int
    split: Split = "train"
    seed: int = 0
    fps: float = 16.0
    seconds: float = 2.0
    height: int = 64
    width: int = 64
    objects: int = 1
    cameras: tuple[str, ...] = ("is still",)
    audio: bool = False
    edits: tuple[str, ...] = ()
    characters: bool = False

    def validate(self) -> None:
        from megatron_moviegen.config.schema import ConfigError

        if self.count < 1 or self.objects < 1 or self.height < 2 or self.width < 2 or self.seconds <= 0 or self.fps < 0:
            raise ConfigError(f"world: got count {self.count}, objects {self.objects}, {self.height}x{self.width}, "
                              f"{self.seconds} s at {self.fps} fps; need count, objects >= 1, sizes >= 2, seconds > 0")
        if self.split not in SEED_STREAMS:
            raise ConfigError(f"world.split: got {self.split!r}, expected one of {sorted(SEED_STREAMS)}")
        for name, values, allowed in (("cameras", self.cameras, CAMERAS), ("edits", self.edits, EDITS)):
            if not set(values) <= set(allowed):
                raise ConfigError(f"world.{name}: got {list(values)}, each must be one of {list(allowed)}")
        if "remove" in self.edits and self.objects < 2:
            raise ConfigError("world.edits: 'remove' needs objects >= 2 (one object stays in the target)")
        if self.fps == 0 and (self.audio or self.edits):
            raise ConfigError("world: still images (fps 0) have no soundtrack and no video edits")


def write_world(out: str | Path, spec: WorldSpec, progress: bool = True) -> Path:
    """Render `spec` into `out`: the media, `manifest.jsonl` (the project's manifest: path, caption and the edit or
    reference fields) and `truth.jsonl` (per entry: the scene, its collisions, the render settings); returns the
    manifest. Deterministic for a spec; files already there are kept (a killed run resumes), each written atomically."""
    import json

    from tqdm import tqdm

    from megatron_moviegen.utils.io import atomic_write_text
    from megatron_moviegen.utils.video_io import write_image

    spec.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries, truths = [], []
    for index in tqdm(range(spec.count), desc=f"world ({spec.split})", unit="scene", disable=not progress):
        rng = random.Random(scene_seed(spec.split, index, spec.seed))
        scene = sample_scene(rng, spec.split, spec.objects, spec.seconds or 1.0, spec.width / spec.height,
                             spec.cameras, spec.characters, bounces=spec.audio)
        stem = f"{spec.split}-{index:06d}"
        entry, truth = {"caption": scene.caption()}, {"split": spec.split, "index": index, "fps": spec.fps,
                                                       "seconds": spec.seconds, "height": spec.height,
                                                       "width": spec.width}
        if spec.edits:
            source, path = out / f"{stem}-source.mp4", out / f"{stem}.mp4"
            target, instruction = edit(scene, spec.edits[index % len(spec.edits)], rng)
            _write_clip(source, scene, spec, simulate(scene, spec.seconds))
            entry.update(caption=instruction, source=source.name, task=EDIT_TASKS[spec.edits[index % len(spec.edits)]])
            truth.update(source_scene=scene.to_dict(), edit=spec.edits[index % len(spec.edits)])
            scene = target
        else:
            path = out / f"{stem}.{'png' if spec.fps == 0 else 'mp4'}"
        motion = None
        if spec.fps == 0:
            if not path.exists():
                write_image(path, render(scene, 1.0, 1.0, spec.height, spec.width))
        else:
            motion = simulate(scene, spec.seconds)
            _write_clip(path, scene, spec, motion)
        if spec.characters:
            name = scene.objects[0].character
            reference = out / f"reference-{name}.png"
            if not reference.exists():
                write_image(reference, character_reference(name, max(spec.height, spec.width)))
            entry.update(reference=reference.name, subject=name)
        entry["path"] = path.name
        truth.update(path=path.name, scene=scene.to_dict(), collisions=motion.collisions if motion else [])
        entries.append(entry)
        truths.append(truth)
    atomic_write_text(out / "truth.jsonl", "".join(json.dumps(t) + "\n" for t in truths))
    manifest = out / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(e) + "\n" for e in entries))
    return manifest


def _write_clip(path: Path, scene: Scene, spec: WorldSpec, motion: Motion) -> None:
    """The scene as `path` (.mp4), with its soundtrack muxed in when spec.audio; kept when it is there."""
    from megatron_moviegen.utils.audio_io import mux_audio
    from megatron_moviegen.utils.video_io import write_video

    if path.exists():
        return
    video = render(scene, spec.fps, spec.seconds, spec.height, spec.width, motion)
    if not spec.audio:
        write_video(path, video, spec.fps)
        return
    silent = path.with_name(f".{path.stem}.silent.mp4")
    write_video(silent, video, spec.fps)
    mux_audio(silent, soundtrack(scene, spec.seconds, motion), SAMPLE_RATE, path)
    silent.unlink()
