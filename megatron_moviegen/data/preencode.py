"""Pre-encoding (SPEC section 4: latents are computed once and cached): manifest -> decode -> bucket ->
TAE encode -> text encoders -> WebDataset shards.

Shard k holds manifest entries [k * shard_size, (k + 1) * shard_size) minus the rejected ones, so a shard's
content depends only on the manifest and the config, never on how many processes ran or when one died.
Rank r of a torchrun/srun job writes shards k with k % world_size == r (given a `manifest.ManifestFile`, it
holds only their entries: `manifest.read_slice`). A shard is complete once its index file exists; a rerun skips
complete shards and redoes the rest from scratch, so a killed run resumes with no duplicates and no losses. Whichever rank finds every shard complete writes rejects.jsonl, summary.json and
energon's `.nv-meta/`.

Every reject has a kind: "manifest" (the entry's own fields are unusable), "io" (the file could not be read,
after `io_retries` retries), "decode" (read, but not media we can decode), "bucket" (no bucket fits it) or
"encode" (an encoder's latents or embeddings of it hold NaN or inf, as stored: never written) or "duplicate" (it
repeats an earlier manifest entry, which the reason names: encoded once, not once a copy). A run whose first
encoded shard holds only such samples stops with NonFiniteEncoderError: the encoder, not the data, is broken.
`run(..., retry_rejects=True)` reads the "io" rejects of complete shards again and rewrites exactly the
shards that gain samples, keeping their other samples byte for byte.
"""

from __future__ import annotations


import fcntl
import hashlib
import importlib
import json
import logging
import os
import time
from collections import Counter, deque
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import lru_cache, partial
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Protocol, Union

import av
import torch
from tqdm import tqdm

from megatron_moviegen.conditioning import Conditioning, Images, TextEncoder, Tokens
from megatron_moviegen.config.schema import ConfigError, to_dict
from megatron_moviegen.data.buckets import Assignment, Bucket, BucketTable, Rejection
from megatron_moviegen.data.audio import AudioClip, assign_audio, probe_audio, read_audio
from megatron_moviegen.data.config import REFERENCE_SOURCE, AudioDataConfig, DataConfig, EditConfig, ReferenceConfig
from megatron_moviegen.data.degrade import condition_pixels, low_resolution_size
from megatron_moviegen.data.decode import ClipRequest, DecodeError, Decoder, build_decoder, to_unit_range
from megatron_moviegen.data.manifest import ManifestEntry, ManifestSlice, entry_problem, read_slice, reference_problem
from megatron_moviegen.data.manifest_index import INDEX_DIR as MANIFEST_INDEX_DIR
from megatron_moviegen.data.manifest_index import (build_index, indexable, publish_index, read_indexed_slice,
                                                   wait_for_index)
from megatron_moviegen.runtime import local_rank_from_env
from megatron_moviegen.text.prompts import conditioning_prompt, prompt_fps
from megatron_moviegen.utils.io import atomic_output, check_writable_folder, read_json_file
from megatron_moviegen.utils.processes import die_with_parent
from megatron_moviegen.data.shard_table import ShardSummary, summarise, write_table
from megatron_moviegen.data.shards import (
    EncodedSample,
    INDEX_DIR,
    ShardIndex,
    atomic_write_text,
    FINALIZE_LOCK,
    RUN_RECORD,
    completed_shards,
    remove_partial_files,
    same_encoder,
    sample_key,
    shard_name,
    write_energon_metadata,
    write_shard,
)

FINALIZE_WAIT_S = 600.0  # how long a rank that rewrote shards waits for another rank's finalize
PARALLEL_FINALIZE_SHARDS = 1000  # fewer shards finalise faster in one process than a pool starts (0.1 s at 9)

# Raised by a source the decoder cannot use; OSErrors (the file could not be read) are retried first.
DECODE_ERRORS = (DecodeError, ValueError, av.FFmpegError)

log = logging.getLogger(__name__)


class VideoEncoder(Protocol):
    """What pre-encoding needs of the TAE (`models.toy_encoders.TAEVideoEncoder`, or a toy one)."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(b, 3, t, h, w) in [-1, 1] -> latents (b, 16, ceil(t/8), h/8, w/8)."""


class AudioEncoder(Protocol):
    """What pre-encoding needs of the audio autoencoder (`models.audio_ae.AudioLatentEncoder`)."""

    cfg: object  # AudioAEConfig: sample_rate, audio_channels, latent_rate

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """(b, ch, n) in [-1, 1] -> latents (b, c, ceil(n / hop), 1, 1)."""


class FrameEncoder(Protocol):
    """What pre-encoding needs of the video-feature tower (`models.vision_tower.FrameFeatureEncoder`)."""

    model: torch.nn.Module
    width: int

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(t, h, w, 3) uint8 frames -> (t, width) features."""


class ImageEncoder(Protocol):
    """What pre-encoding needs of a reference-image encoder (`models.vision_tower.ReferenceEncoder`)."""

    model: torch.nn.Module

    def encode(self, frames: list[torch.Tensor]) -> Tokens:
        """b (h, w, 3) uint8 images -> Tokens((b, max_length, width), (b, max_length) bool)."""

    def images(self, frames: list[torch.Tensor]) -> Images:
        """b (h, w, 3) uint8 images -> the input of a trainable tower: Images((b, 3, s, s), (b,) bool)."""


@dataclass
class Prepared:
    """One decoded sample waiting for its encode batch."""

    index: int
    entry: ManifestEntry
    bucket: Bucket
    fps: float
    frames: torch.Tensor  # (t, h, w, 3) uint8
    sha256: str
    source_frames: Optional[torch.Tensor] = None  # editing: the unedited media, decoded with the same request
    source_sha256: Optional[str] = None
    reference_frame: Optional[torch.Tensor] = None  # personalization: (h, w, 3) uint8, cropped when data.reference.crop
    reference_sha256: Optional[str] = None


@dataclass
class PreparedAudio:
    """One decoded audio sample waiting for its encode batch (data.audio)."""

    index: int
    entry: ManifestEntry
    clip: AudioClip
    waveform: torch.Tensor  # (channels, n) float32 in [-1, 1]
    frames: Optional[torch.Tensor]  # (T, s, s, 3) uint8, one per latent frame; None: the file has no video
    sha256: str

    @property
    def bucket(self):
        return self.clip.bucket

    @property
    def fps(self) -> float:
        return self.clip.video_fps  # 0 without video


@dataclass
class Rejected:
    index: int
    path: str
    kind: str  # "manifest", "io", "decode", "bucket", "encode" or "duplicate" (see the module docstring)
    reason: str

    def record(self) -> dict:
        return {"index": self.index, "path": self.path, "kind": self.kind, "reason": self.reason}


class NonFiniteEncoderError(ValueError):
    """Every sample an encoder gave in this run so far is NaN or inf: stop instead of rejecting the dataset."""


def nonfinite_reject(sample: EncodedSample, latent_dtype: torch.dtype) -> Optional[Rejected]:
    """A reject of kind "encode" naming each tensor of `sample`, as stored in `latent_dtype`, that holds NaN or inf;
    None when all are finite."""
    tensors = {"latents": sample.latents.to(latent_dtype), **sample.conditioning.to_tensors(latent_dtype)}
    bad = [f"{name} ({int((~torch.isfinite(t)).sum())} of {t.numel()} values)" for name, t in tensors.items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if not bad:
        return None
    return Rejected(int(sample.key), sample.meta["source"], "encode",
                    f"the encoders' output is not finite in {latent_dtype}: NaN or inf in {', '.join(bad)}")


# The file system's answer rather than a hiccup: waiting seconds does not change it (a later --retry-rejects
# may), and a dataset with many missing files must not wait 3.5 s for each.
ANSWERED = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


@dataclass(frozen=True)
class IORetry:
    """How often and how patiently an OSError reading a source is retried (DataConfig.io_retries)."""

    retries: int = 3
    first_delay_s: float = 0.5

    @staticmethod
    def worth_waiting(exc: OSError) -> bool:
        return not isinstance(exc.__cause__ or exc, ANSWERED)

    def call(self, fn: Callable[[], object]):
        """`fn()`, retried on OSError (but not ANSWERED ones) after waits of first_delay_s, 2x, 4x, ...;
        the last OSError propagates."""
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except OSError as exc:
                if attempt == self.retries or not self.worth_waiting(exc):
                    raise
                time.sleep(self.first_delay_s * 2**attempt)


@dataclass
class RunSummary:
    """What this process did in this run (completed shards from earlier runs are not counted)."""

    encoded: int = 0
    rejected: int = 0
    frames: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    prepared: int = 0  # entries decoded or rejected so far (what `on_prepared` is told; a disabled bar counts none)
    seconds: float = 0.0
    per_bucket: Counter = field(default_factory=Counter)

    @property
    def samples_per_s(self) -> float:
        return self.encoded / self.seconds if self.seconds else 0.0


def local_device(requested: str, env: Mapping[str, str], gpu_count: int) -> torch.device:
    """`--device` -> this process's device. A bare "cuda" means the GPU of this node-local rank (torchrun's
    LOCAL_RANK, else srun's SLURM_LOCALID, else 0), so eight ranks on a node use eight GPUs, not all cuda:0;
    a process that sees one GPU (srun --gpus-per-task=1 binds each task to its own) uses that one."""
    device = torch.device(requested)
    if device.type != "cuda" or device.index is not None:
        return device
    local_rank = local_rank_from_env(env)
    if gpu_count == 1 or local_rank < gpu_count:
        return torch.device("cuda", min(local_rank, gpu_count - 1))
    raise ValueError(f"local rank {local_rank} (LOCAL_RANK / SLURM_LOCALID), but this process sees {gpu_count} "
                     f"GPU(s); need one rank per GPU (local rank < {gpu_count}) or one GPU per process")


def use_local_device(requested: str) -> torch.device:
    """`local_device` for this process, made current (torch.cuda.set_device) so that code asking for a plain
    "cuda" (text encoders, TAE) lands on the same GPU."""
    device = local_device(requested, os.environ, torch.cuda.device_count())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _assign(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder,
            audio: Optional[AudioDataConfig] = None) -> Union[Assignment, AudioClip, Rejected]:
    if audio is not None:
        clip = assign_audio(probe_audio(entry.path), entry.start_s, entry.end_s, audio)
        return Rejected(index, entry.path, "bucket", clip) if isinstance(clip, str) else clip
    info = decoder.probe(entry.path)
    if entry.fps is not None and not info.is_image:
        info = replace(info, fps=entry.fps)
    result = table.assign(info, entry.start_s, entry.end_s)
    return Rejected(index, entry.path, "bucket", result.reason) if isinstance(result, Rejection) else result


def _prepare_audio(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder,
                   audio: AudioDataConfig) -> Union[PreparedAudio, Rejected]:
    """The entry's audio for its bucket's duration and, when it has video, one frame per latent frame."""
    clip = _assign(index, entry, table, decoder, audio)
    if isinstance(clip, Rejected):
        return clip
    waveform = read_audio(entry.path, audio.sample_rate, audio.channels, clip.start_s, clip.duration_s)
    frames = None
    if clip.has_video:
        request = ClipRequest(clip.start_s, audio.latent_rate, clip.bucket.num_frames, audio.frame_size,
                              audio.frame_size)
        frames = decoder.clip_frames(entry.path, request)
    return PreparedAudio(index, entry, clip, waveform, frames, file_sha256(entry.path))


def _prepare(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder,
             reference: Optional[ReferenceConfig] = None, audio: Optional[AudioDataConfig] = None
             ) -> Union[Prepared, PreparedAudio, Rejected]:
    if audio is not None:
        return _prepare_audio(index, entry, table, decoder, audio)
    assignment = _assign(index, entry, table, decoder)
    if isinstance(assignment, Rejected):
        return assignment
    frames = decoder.clip_frames(entry.path, assignment.clip)
    prepared = Prepared(index, entry, assignment.bucket, assignment.clip.fps, frames, file_sha256(entry.path))
    if entry.source is not None:
        # The edit's source at the target's times and size: a pixel of the one sits where it does in the other.
        prepared.source_frames = decoder.clip_frames(entry.source, assignment.clip)
        prepared.source_sha256 = file_sha256(entry.source)
    if reference is not None:
        prepared.reference_frame = reference_frame(entry.reference, entry.reference_time or 0.0, decoder,
                                                   load_crop(reference.crop))
        prepared.reference_sha256 = file_sha256(entry.reference)
    return prepared


def reference_frame(path: str, time_s: float, decoder: Decoder, crop: Optional[Callable] = None) -> torch.Tensor:
    """One frame of a reference image or video (at `time_s`) at its own size, through `crop` when given:
    (h, w, 3) uint8."""
    info = decoder.probe(path)
    if not info.is_image and time_s >= info.duration_s:
        raise DecodeError(f"reference_time {time_s} s is past the end of {path} ({info.duration_s:.2f} s)")
    request = ClipRequest(start_s=0.0 if info.is_image else time_s, fps=info.fps, num_frames=1, height=info.height,
                          width=info.width)
    frame = decoder.native_frames(path, request)[0]  # (h, w, 3) uint8
    if crop is None:
        return frame
    cropped = crop(frame)
    if not (isinstance(cropped, torch.Tensor) and cropped.dtype == torch.uint8 and cropped.dim() == 3
            and cropped.shape[-1] == 3 and min(cropped.shape[:2]) > 0):
        raise DecodeError(f"data.reference.crop returned {type(cropped).__name__} "
                          f"{tuple(getattr(cropped, 'shape', ()))} for {path}; expected an (h, w, 3) uint8 tensor")
    return cropped


@lru_cache(maxsize=None)
def load_crop(spec: Optional[str]) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """data.reference.crop ("package.module:function") -> the function, or None (resolved once per process)."""
    if spec is None:
        return None
    module_name, _, name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"data.reference.crop: cannot import {spec!r} ({exc})") from None
    if not callable(function):
        raise ConfigError(f"data.reference.crop: {spec!r} is not callable")
    return function


def edit_problem(entry: ManifestEntry, edit: Optional[EditConfig]) -> Optional[str]:
    """Why this entry cannot be an editing pair under data.edit (or a plain sample without it), or None."""
    if edit is None:
        return None if entry.source is None else "has a 'source' (an editing pair) but data.edit is not set"
    if entry.source is None:
        return "data.edit is set but the entry has no 'source' (the unedited video or image)"
    try:
        edit.task_id(entry.task)
    except ValueError as exc:
        return str(exc)
    return None


def checked(step: Callable, index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder,
            io: IORetry, edit: Optional[EditConfig] = None, reference: Optional[ReferenceConfig] = None
            ) -> Union[Prepared, Assignment, Rejected]:
    """`step` on one manifest entry, with every problem of the input turned into a Rejected of its kind:
    unusable fields, an unreadable file (after `io`'s retries), a file the decoder refuses."""
    problem = (entry_problem(entry) or edit_problem(entry, edit)
               or (reference_problem(entry) if reference is not None else None))
    if problem is not None:
        return Rejected(index, entry.path, "manifest", problem)
    try:
        return io.call(lambda: step(index, entry, table, decoder))
    except OSError as exc:
        tries = f"{io.retries + 1} tries" if io.worth_waiting(exc) else "1 try"
        return Rejected(index, entry.path, "io", f"{type(exc).__name__}: {exc} ({tries})")
    except DECODE_ERRORS as exc:
        return Rejected(index, entry.path, "decode", f"{type(exc).__name__}: {exc}")


def assign_entry(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder,
                 io: IORetry = IORetry(), edit: Optional[EditConfig] = None,
                 reference: Optional[ReferenceConfig] = None, audio: Optional[AudioDataConfig] = None
                 ) -> Union[Assignment, AudioClip, Rejected]:
    """Probe and bucket one manifest entry (file headers only)."""
    return checked(partial(_assign, audio=audio), index, entry, table, decoder, io, edit, reference)


def prepare_entry(index: int, entry: ManifestEntry, table: BucketTable, decoder: Decoder,
                  io: IORetry = IORetry(), edit: Optional[EditConfig] = None,
                  reference: Optional[ReferenceConfig] = None, audio: Optional[AudioDataConfig] = None
                  ) -> Union[Prepared, PreparedAudio, Rejected]:
    """Probe, bucket and decode one manifest entry (and an editing pair's source, a reference image; with
    data.audio, its audio and video frames)."""
    return checked(partial(_prepare, reference=reference, audio=audio), index, entry, table, decoder, io, edit,
                   reference)


_worker_state: dict = {}


def _init_worker(config: DataConfig, parent_pid: Optional[int] = None, device: Optional[torch.device] = None) -> None:
    """`device`: the encoders' (a GPU decoder decodes onto it); None: this node-local rank's GPU."""
    if parent_pid is not None:
        die_with_parent(parent_pid)  # a kill -9 of pre-encoding must not leave its decode workers running
    torch.set_num_threads(1)
    _worker_state["table"] = BucketTable(config.buckets)
    gpu = device.index if device is not None and device.type == "cuda" else None
    _worker_state["decoder"] = build_decoder(config.decoder, device_id=gpu)
    _worker_state["io"] = IORetry(config.io_retries, config.io_retry_delay_s)
    _worker_state["edit"] = config.edit
    _worker_state["reference"] = config.reference
    _worker_state["audio"] = config.audio


def _worker_args() -> tuple:
    state = _worker_state
    return state["table"], state["decoder"], state["io"], state["edit"], state["reference"], state["audio"]


def _prepare_in_worker(item: tuple[int, ManifestEntry]) -> Union[Prepared, Rejected]:
    return prepare_entry(item[0], item[1], *_worker_args())


def _assign_in_worker(item: tuple[int, ManifestEntry]) -> Union[Assignment, Rejected]:
    return assign_entry(item[0], item[1], *_worker_args())


def map_rejecting_repeats(fn: Callable, items: list[tuple[int, ManifestEntry]], repeats: dict[int, int],
                          config: DataConfig, device: Optional[torch.device] = None) -> Iterator:
    """`ordered_map(fn, items)`, with each item whose index is in `repeats` (manifest.repeated_entries) a "duplicate"
    reject in its place, never read."""
    results = ordered_map(fn, [item for item in items if item[0] not in repeats], config, device)
    for index, entry in items:
        if index in repeats:
            yield Rejected(index, entry.path, "duplicate", f"repeats manifest entry {repeats[index]} (the same file, "
                           "clip and caption); each entry is encoded once")
        else:
            yield next(results)


def ordered_map(fn: Callable, items: Iterable, config: DataConfig, device: Optional[torch.device] = None) -> Iterator:
    """`map(fn, items)` in order, on `config.num_workers` spawned processes (in-process when 0), bounded queue.
    `device`: the encoders', where a GPU decoder decodes."""
    num_workers = config.num_workers
    if num_workers == 0:
        _init_worker(config, device=device)
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(config, os.getpid(), device)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Preencoder:
    """Writes the shards of one rank. `on_prepared(n)` is called after each decoded sample (tests inject crashes)."""

    def __init__(self, config: DataConfig, video_encoder: Optional[VideoEncoder], text_encoder: TextEncoder,
                 out_dir: str | Path, device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1,
                 on_prepared: Optional[Callable[[int], None]] = None, reference_encoder: Optional[ImageEncoder] = None,
                 audio_encoder: Optional[AudioEncoder] = None, frame_encoder: Optional[FrameEncoder] = None,
                 encoder_sources: Optional[dict[str, dict[str, str]]] = None):
        """video_encoder: the TAE (None with data.audio); reference_encoder: with data.reference, the vision tower
        (`models.vision_tower.ReferenceEncoder`); audio_encoder and frame_encoder: with data.audio, the audio
        autoencoder (`models.audio_ae.AudioLatentEncoder`) and the video-feature tower
        (`models.vision_tower.FrameFeatureEncoder`)."""
        config.validate()
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank: got {rank}, must be in [0, world_size={world_size})")
        if config.decoder != "pyav" and config.num_workers > 0:
            raise ConfigError(f"num_workers: got {config.num_workers}; decoder {config.decoder} runs in-process, use 0")
        self.config = config
        self.video_encoder = video_encoder
        self.text_encoder = text_encoder
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.on_prepared = on_prepared
        self.latent_dtype = getattr(torch, config.latent_dtype)
        self.reference_encoder = reference_encoder
        self.audio_encoder, self.frame_encoder = audio_encoder, frame_encoder
        # {role: {"source": what the encoder was loaded from ("toy-tae", a folder, "paper"), "overrides": the text
        # encoders' field=value lines}}, recorded beside the weights' hash so generation loads the same by default
        self.encoder_sources = encoder_sources
        if config.reference is not None:
            load_crop(config.reference.crop)  # a crop that cannot be imported fails here, not in every worker

    def read(self, manifest: Iterable[ManifestEntry]) -> ManifestSlice:
        """This rank's share of `manifest` (a list of entries, or a `manifest.ManifestFile` read as a stream): the
        entries of its shards, k % world_size == rank. A `.jsonl` manifest file is read through its index in the
        output folder when one is valid (`manifest_index`: only this rank's lines are parsed); without one rank 0
        writes it on the pass it makes anyway (`run` publishes it) while the other ranks wait for it up to
        data.manifest_index_wait_s, so the manifest is parsed whole once, not once per rank."""
        size, rank, world = self.config.shard_size, self.rank, self.world_size
        def keep(index: int) -> bool:
            return (index // size) % world == rank

        def mine(entries: int) -> Iterator[int]:
            for k in range(rank, num_shards(entries, size), world):
                yield from range(k * size, min((k + 1) * size, entries))

        if indexable(manifest):
            published = self.out_dir / INDEX_DIR / MANIFEST_INDEX_DIR
            part = read_indexed_slice(manifest.source, published, mine)
            if part is None and rank == 0:
                try:
                    part = build_index(manifest.source, self._staged_index_dir(), keep)
                except OSError as exc:  # e.g. the output's parent folder is not writable: no index, same result
                    log.info("manifest index not written (%s); reading the manifest whole", exc)
            elif part is None and self.config.manifest_index_wait_s > 0:  # rank 0 is writing it on its pass
                part = wait_for_index(manifest.source, [published, self._staged_index_dir()], mine,
                                      self.config.manifest_index_wait_s)
            if part is not None:
                return part
        return read_slice(manifest, keep)

    def _staged_index_dir(self) -> Path:
        """Where rank 0 writes the manifest index before the output folder is checked (on its file system)."""
        return self.out_dir.parent / f".{self.out_dir.name}.{MANIFEST_INDEX_DIR}.staged"

    def _publish_staged_index(self) -> None:
        if self._staged_index_dir().is_dir():
            publish_index(self._staged_index_dir(), self.out_dir / INDEX_DIR)

    def shard_plan(self, part: ManifestSlice) -> dict[int, list[tuple[int, ManifestEntry]]]:
        """This rank's shards -> their (manifest index, entry) items: shard k holds [k * shard_size, (k + 1) *
        shard_size)."""
        size = self.config.shard_size
        shards = range(self.rank, num_shards(part.num_entries, size), self.world_size)
        return {k: [(i, part.entries[i]) for i in range(k * size, min((k + 1) * size, part.num_entries))]
                for k in shards}

    def dry_run(self, manifest: Iterable[ManifestEntry]) -> tuple[Counter, list[Rejected]]:
        """Bucket counts and rejects from file headers alone (nothing decoded, nothing written), over the whole
        manifest whatever the rank."""
        counts: Counter = Counter()
        rejects = []
        part = read_slice(manifest, lambda index: True)
        results = map_rejecting_repeats(_assign_in_worker, list(part.entries.items()), part.repeats, self.config,
                                        self.device)
        for result in tqdm(results, total=part.num_entries, desc="probing", unit="sample", disable=self.rank != 0):
            if isinstance(result, Rejected):
                rejects.append(result)
            else:
                counts[result.bucket.name] += 1
        return counts, rejects

    def run(self, manifest: Iterable[ManifestEntry], retry_rejects: bool = False) -> RunSummary:
        """Write this rank's missing shards of `manifest` (a list of entries, or a `manifest.ManifestFile`: then
        only this rank's entries are held); with `retry_rejects`, also read the "io" rejects of its complete
        shards again (the file system may have recovered) and rewrite the shards that gain samples."""
        if self.config.reference is not None and self.reference_encoder is None:
            raise ConfigError("data.reference is set: pre-encoding needs the reference-image encoder "
                              "(models.vision_tower.ReferenceEncoder)")
        if self.config.audio is not None:
            check_audio_encoder(self.config.audio, self.audio_encoder, self.frame_encoder)
        elif self.video_encoder is None:
            raise ConfigError("pre-encoding video needs the TAE (video_encoder)")
        part = self.read(manifest)  # a malformed manifest stops the run before the output folder exists
        check_output_folder(self.out_dir)
        self._check_run_config(part)
        if self.rank == 0:  # only its staging folder; after the checks, so a refused run keeps the old index
            self._publish_staged_index()
        plan = self.shard_plan(part)
        done = completed_shards(self.out_dir)
        # shard -> (entries to prepare, the complete shard's index when only its "io" rejects are redone)
        work: dict[int, tuple[list, Optional[ShardIndex]]] = {}
        for k, shard_items in plan.items():
            if shard_name(k) not in done:
                work[k] = (shard_items, None)
            elif retry_rejects:
                index = ShardIndex.read(self.out_dir / INDEX_DIR / f"{shard_name(k)}.json")
                retry = {r["index"] for r in index.rejects if r.get("kind") == "io"}
                if retry:
                    work[k] = ([item for item in shard_items if item[0] in retry], index)
        remove_partial_files(self.out_dir, list(work))
        summary = RunSummary(shards_skipped=sum(1 for k in plan if k not in work))
        start = time.perf_counter()
        items = [item for k in work for item in work[k][0]]
        results = map_rejecting_repeats(_prepare_in_worker, items, part.repeats, self.config, self.device)
        with tqdm(total=len(items), desc=f"pre-encoding (rank {self.rank})", unit="sample",
                  disable=self.rank != 0) as bar:
            for k, (shard_items, previous) in work.items():
                self._write_one_shard(k, [next(results) for _ in shard_items], summary, bar, previous)
        summary.seconds = time.perf_counter() - start
        total = num_shards(part.num_entries, self.config.shard_size)
        if len(completed_shards(self.out_dir)) == total:
            rewrote = any(previous is not None for _, previous in work.values()) and summary.shards_written > 0
            finalize_once(self.out_dir, total, wait_s=FINALIZE_WAIT_S if rewrote else 0.0,
                          workers=max(1, self.config.num_workers) if total >= PARALLEL_FINALIZE_SHARDS else 1)
        return summary

    def _write_one_shard(self, shard_id: int, results: list, summary: RunSummary, bar: tqdm,
                         previous: Optional[ShardIndex] = None) -> None:
        """Encode and write one shard from its prepared entries; with `previous` (a complete shard whose "io"
        rejects were retried) its earlier samples and other rejects are kept, and the shard is rewritten only
        if a retried entry now encodes."""
        pending: dict[str, list[Prepared]] = {}
        samples: list[EncodedSample] = []
        retried = {r.index for r in results} if previous is not None else set()
        rejects: list[dict] = [r for r in previous.rejects if r["index"] not in retried] if previous else []
        for result in results:
            if isinstance(result, Rejected):
                rejects.append(result.record())
                summary.rejected += 1
            else:
                batch = pending.setdefault(result.bucket.name, [])
                batch.append(result)
                if len(batch) == self.config.encode_batch_size:
                    samples += self.encode_batch(pending.pop(result.bucket.name))
            bar.update(1)
            summary.prepared += 1
            if self.on_prepared is not None:
                self.on_prepared(summary.prepared)
        for name in sorted(pending):
            samples += self.encode_batch(pending[name])
        nonfinite = [r for r in (nonfinite_reject(s, self.latent_dtype) for s in samples) if r is not None]
        if nonfinite and len(nonfinite) == len(samples) and summary.encoded == 0:
            raise NonFiniteEncoderError(
                f"shard {shard_name(shard_id)}: all {len(samples)} encoded samples are not finite, and none before "
                f"them in this run was (first: {nonfinite[0].path}: {nonfinite[0].reason}); the encoders give "
                f"NaN or inf (diverged weights?), so nothing was written: check the TAE and text encoders")
        dropped = {r.index for r in nonfinite}
        samples = [s for s in samples if int(s.key) not in dropped]
        rejects += [r.record() for r in nonfinite]
        summary.rejected += len(nonfinite)
        if previous is not None and not samples:
            summary.shards_skipped += 1  # every retried entry failed again: the complete shard stays as it is
            return
        kept = previous.samples if previous is not None else []
        write_shard(self.out_dir, shard_id, samples, sorted(rejects, key=lambda r: r["index"]),
                    self.latent_dtype, kept=kept)
        summary.shards_written += 1
        summary.encoded += len(samples)
        for s in samples:
            summary.per_bucket[s.meta["bucket"]] += 1
            summary.frames += s.meta["num_frames"]

    @torch.no_grad()
    def encode_audio_batch(self, batch: list[PreparedAudio]) -> list[EncodedSample]:
        """One bucket's decoded audio samples -> audio latents (b, c, T, 1, 1), text embeddings of the captions and
        the video features (b, width, T, 1, 1) as condition channels (zeros for a file without video), on CPU."""
        waveforms = torch.stack([p.waveform for p in batch]).to(self.device)  # (b, ch, n)
        latents = self.audio_encoder.encode(waveforms).float().cpu()
        frames = latents.shape[2]
        features = torch.zeros(len(batch), self.frame_encoder.width, frames, 1, 1)
        for i, p in enumerate(batch):
            if p.frames is not None:
                features[i, :, :, 0, 0] = self.frame_encoder.encode(p.frames).float().cpu().T  # (width, T)
        prompts = [p.entry.caption for p in batch]
        conditioning = Conditioning(tokens=self.text_encoder.encode(prompts), channels=features).to("cpu")
        audio = self.config.audio
        return encoded_samples(batch, latents, conditioning, prompts, False, lambda i, p: {"audio": {
            "duration_s": p.clip.duration_s, "sample_rate": audio.sample_rate, "channels": audio.channels,
            "has_video": p.frames is not None}})

    @torch.no_grad()
    def encode_batch(self, batch: list[Prepared]) -> list[EncodedSample]:
        """One bucket's decoded samples -> latents and text embeddings (and the condition latents: with
        data.upsample, of each clip's degraded low-res version; with data.edit, of each pair's source, with its
        task index), moved to CPU. With data.audio: `encode_audio_batch`."""
        if self.config.audio is not None:
            return self.encode_audio_batch(batch)
        pixels = torch.stack([to_unit_range(p.frames) for p in batch]).to(self.device)  # (b, 3, t, h, w)
        latents = self.video_encoder.encode(pixels).cpu()  # (b, 16, t', h', w')
        prompts = [conditioning_prompt(p.entry.caption, None if p.bucket.is_image else p.fps) for p in batch]
        edit, reference = self.config.edit, self.config.reference
        task = None if edit is None else torch.tensor([edit.task_id(p.entry.task) for p in batch])
        tokens, images = self.text_encoder.encode(prompts), {}
        if reference is not None:  # a frozen tower's tokens, or a trainable tower's input pixels
            frames = [p.reference_frame for p in batch]
            if reference.trainable:
                images = {REFERENCE_SOURCE: self.reference_encoder.images(frames)}
            else:
                tokens = {**tokens, REFERENCE_SOURCE: self.reference_encoder.encode(frames)}
        conditioning = Conditioning(tokens=tokens, channels=self.condition_latents(pixels, batch), task=task,
                                    images=images).to("cpu")
        upsample = self.config.upsample
        low_res = None if upsample is None else low_resolution_size(pixels.shape[-2], pixels.shape[-1],
                                                                     upsample.low_resolution_factor)
        return encoded_samples(batch, latents, conditioning, prompts, True, lambda i, p: {
            **({} if low_res is None else {"low_resolution": list(low_res), "degradation": upsample.degradation}),
            **({} if edit is None else {"edit_source": p.entry.source, "source_sha256": p.source_sha256,
                                        "task": edit.tasks[int(task[i])]}),
            **({} if reference is None else {"reference": p.entry.reference, "reference_time": p.entry.reference_time,
                                             "reference_sha256": p.reference_sha256, "subject": p.entry.subject}),
        })

    def condition_latents(self, pixels: torch.Tensor, batch: list[Prepared]) -> Optional[torch.Tensor]:
        """The condition channels (b, 16, t', h', w'): with data.upsample, latents of the (b, 3, t, h, w) high-res
        pixels' degraded, bilinearly re-upsampled versions; with data.edit, latents of each pair's source; else
        None."""
        if self.config.edit is not None:
            sources = torch.stack([to_unit_range(p.source_frames) for p in batch]).to(self.device)
            return self.video_encoder.encode(sources).cpu()
        if self.config.upsample is None:
            return None
        degraded = [condition_pixels(pixels[i : i + 1], self.config.upsample,
                                     torch.Generator().manual_seed(p.index)) for i, p in enumerate(batch)]
        return self.video_encoder.encode(torch.cat(degraded)).cpu()

    def _check_run_config(self, part: ManifestSlice) -> None:
        """Refuse to resume into a folder written from another manifest or config (shards would not line up)
        or with other encoders (one dataset would hold latents or embeddings of two models)."""
        record = {"manifest_sha256": part.sha256, "num_entries": part.num_entries,
                  "shard_size": self.config.shard_size, "buckets": to_dict(self.config.buckets),
                  "latent_dtype": self.config.latent_dtype, "upsample": to_dict(self.config.upsample),
                  **({} if self.config.edit is None else {"edit": to_dict(self.config.edit)}),
                  **({} if self.config.reference is None else {"reference": to_dict(self.config.reference)}),
                  **({} if self.config.audio is None else {"audio": to_dict(self.config.audio)})}
        if self.config.audio is None:
            encoders = {"video": encoder_record(self.video_encoder), "text": encoder_record(self.text_encoder)}
        else:
            encoders = {"audio": encoder_record(self.audio_encoder), "text": encoder_record(self.text_encoder),
                        "video features": encoder_record(self.frame_encoder.model)}
        if self.config.reference is not None:
            encoders["reference"] = encoder_record(self.reference_encoder.model)
        for role, loaded_from in (self.encoder_sources or {}).items():
            if role in encoders:
                encoders[role].update(loaded_from)  # where it loads from: generation's default (not compared)
        path = self.out_dir / RUN_RECORD
        if not path.exists():
            atomic_write_text(path, json.dumps({**record, "encoders": encoders}, indent=2))
            return
        previous = read_json_file(path, "pre-encoding record")
        changed = sorted(k for k in record if previous.get(k) != record[k])
        if changed:
            raise ConfigError(f"{self.out_dir} was written with different {changed}; use a new output folder")
        if "encoders" not in previous:  # written before encoders were recorded: from now on they are
            atomic_write_text(path, json.dumps({**previous, "encoders": encoders}, indent=2))
            return
        for role in encoders:
            was, now = previous["encoders"].get(role), encoders[role]
            if was is None:
                raise ConfigError(f"{self.out_dir} holds no {role} encodings but this run adds {now['name']}; one "
                                  "dataset cannot mix encoders: use a new output folder")
            if not same_encoder(was, now):
                raise ConfigError(
                    f"{self.out_dir} holds {role} encodings from {was['name']} (weights sha256 {was['sha256'][:12]}) "
                    f"but this run's {role} encoder is {now['name']} (sha256 {now['sha256'][:12]}); one dataset "
                    f"cannot mix encoders: resume with the same encoder or use a new output folder")


def encoded_samples(batch: list, latents: torch.Tensor, conditioning: Conditioning, prompts: list[str],
                    fps_prefix: bool, extra: Callable[[int, object], dict]) -> list[EncodedSample]:
    """One EncodedSample per decoded item of `batch` (Prepared or PreparedAudio): its row of `latents` and
    `conditioning`, and the meta every sample has (caption, prompt, the n of its "FPS-n" prefix when `fps_prefix`
    (video; None for an image), fps, frames, bucket, source, start, sha256, latent shape), plus `extra(i, item)`."""
    return [
        EncodedSample(
            key=sample_key(p.index),
            latents=latents[i],
            conditioning=conditioning.map(lambda tensor, i=i: tensor[i]),
            meta={
                "caption": p.entry.caption,
                "prompt": prompts[i],
                "prompt_fps": prompt_fps(None if p.bucket.is_image else p.fps) if fps_prefix else None,
                "fps": p.fps,
                "num_frames": p.bucket.num_frames,
                "bucket": p.bucket.name,
                "is_image": p.bucket.is_image,
                "source": p.entry.path,
                "start_s": p.entry.start_s,
                "sha256": p.sha256,
                "latent_shape": list(latents[i].shape),
                **extra(i, p),
            },
        )
        for i, p in enumerate(batch)
    ]


def check_audio_encoder(audio: AudioDataConfig, encoder: Optional[AudioEncoder],
                        frame_encoder: Optional[FrameEncoder]) -> None:
    """data.audio's rates are the audio autoencoder's, and both encoders are there."""
    if encoder is None or frame_encoder is None:
        raise ConfigError("data.audio is set: pre-encoding needs the audio autoencoder and the video-feature tower "
                          "(data.audio.video_encoder)")
    model = encoder.cfg
    if (model.sample_rate, model.audio_channels) != (audio.sample_rate, audio.channels):
        raise ConfigError(f"data.audio: sample_rate {audio.sample_rate}, channels {audio.channels}, but the audio "
                          f"autoencoder takes {model.sample_rate} Hz with {model.audio_channels} channel(s)")
    if abs(model.latent_rate - audio.latent_rate) > 1e-9:
        raise ConfigError(f"data.audio.latent_rate: {audio.latent_rate}, but the audio autoencoder gives "
                          f"{model.latent_rate:g} latent frames a second ({model.sample_rate} Hz / hop "
                          f"{model.hop_length})")


def num_shards(num_entries: int, shard_size: int) -> int:
    return -(-num_entries // shard_size)


def check_output_folder(out_dir: Path) -> None:
    """Create `out_dir` and write a probe file in it, or say in one line why that is impossible."""
    try:
        check_writable_folder(out_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def encoder_record(encoder: object) -> dict:
    """{"name": class name, "sha256": hash of its weights and settings}, to tell two encoders apart."""
    digest = hashlib.sha256()
    _hash_into(digest, vars(encoder) if hasattr(encoder, "__dict__") else encoder)
    return {"name": type(encoder).__name__, "sha256": digest.hexdigest()}


def _hash_into(digest, value) -> None:
    """Weights (tensors, module state dicts) by their bytes, settings (numbers, strings, dataclasses) by value;
    other objects (tokenizers, functions) by their type or qualified name only."""
    if isinstance(value, torch.nn.Module):
        value = value.state_dict()
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _hash_into(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_into(digest, item)
    elif isinstance(value, (str, int, float, bool, type(None), torch.dtype, torch.device)):
        digest.update(repr(value).encode())
    elif is_dataclass(value) and not isinstance(value, type):
        digest.update(type(value).__name__.encode())
        _hash_into(digest, {f.name: getattr(value, f.name) for f in fields(value)})
    else:
        digest.update(getattr(value, "__qualname__", type(value).__qualname__).encode())


def finalize_once(out_dir: Path, num_shards: int, wait_s: float = 0.0, workers: int = 1) -> None:
    """`finalize` by the first rank to see every shard complete; the others leave it to that one. A rank that
    rewrote shards (--retry-rejects) passes `wait_s`: another rank may be finalizing from the old shards, so it
    waits for that one to finish and finalizes again, last.

    The lock is an flock on `.finalize.lock`, held while the file is open: the kernel drops it when its holder
    exits or is killed, so no rank ever removes a lock file another rank may hold (the O_EXCL file used before had
    to be unlinked at start-up after a kill, which let a late rank 0 unlink the lock of a rank finalizing)."""
    lock = out_dir / FINALIZE_LOCK
    deadline = time.monotonic() + wait_s
    with open(lock, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    if wait_s:
                        raise RuntimeError(f"{lock} was held for {wait_s:.0f}s by another pre-encoding rank that is "
                                           "still running; rerun once it has finished") from None
                    return
                time.sleep(0.5)
        try:
            finalize(out_dir, num_shards, workers)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finalize(out_dir: Path, num_shards: int, workers: int = 1, energon_index: bool = True) -> dict | None:
    """From the shard indexes, in one streaming pass (memory O(1) in the sample count, O(shards) for energon's shard
    list): rejects.jsonl, the shard table the loader plans from (`shard_table.py`), summary.json (counts per bucket)
    and energon's `.nv-meta/` (with `energon_index`, and energon installed, its sqlite sample index from
    `prepare_dataset`). `workers` processes read and summarise the indexes (and run energon's preparation).
    None (nothing written) when an index vanished meanwhile: a rank is rewriting that shard and finalizes after."""
    ids = sorted(range(num_shards), key=shard_name)  # shard-name order, as the loader sorts them
    per_bucket, per_fps, shard_counts, rejected = Counter(), Counter(), {}, 0
    try:
        with summaries(out_dir / INDEX_DIR, ids, workers) as shards, \
                atomic_output(out_dir / "rejects.jsonl") as rejects_tmp, open(rejects_tmp, "w") as rejects:
            def counted() -> Iterator[ShardSummary]:
                nonlocal rejected
                for shard in tqdm(shards, total=len(ids), desc="finalise", unit="shard", disable=len(ids) < 1000,
                                  mininterval=5):
                    rejects.writelines(json.dumps(r) + "\n" for r in shard.rejects)
                    rejected += len(shard.rejects)
                    per_bucket.update(bucket for bucket, _ in shard.buckets)
                    per_fps.update(shard.prompt_fps)
                    if shard.buckets:
                        shard_counts[shard.name] = len(shard.buckets)
                    yield shard

            table = write_table(out_dir / INDEX_DIR, counted())
    except FileNotFoundError:
        return None
    summary = {
        "samples": table["samples"],
        "rejected": rejected,
        "shards": table["shards"],
        "per_bucket": dict(sorted(per_bucket.items())),
        "per_prompt_fps": {str(fps): n for fps, n in sorted(per_fps.items())},  # the FPS-n prefixes trained on
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
    write_energon_metadata(out_dir, shard_counts, workers if energon_index else None)
    return summary


@contextmanager
def summaries(index_dir: Path, ids: list[int], workers: int) -> Iterator[Iterator[ShardSummary]]:
    """`summarise` of each shard's index, in the order of `ids`: read in `workers` forked processes (JSON parsing
    and hashing are the cost; the results are a few values per sample), or here with one."""
    if workers <= 1:
        yield map(partial(_summarise_shard, index_dir), ids)
        return
    with get_context("fork").Pool(workers) as pool:  # the children read files and hash; no torch, no threads
        yield pool.imap(partial(_summarise_shard, index_dir), ids, chunksize=64)


def _summarise_shard(index_dir: Path, shard_id: int) -> ShardSummary:
    index = ShardIndex.read(index_dir / f"{shard_name(shard_id)}.json")
    return summarise(shard_id, index.shard, index.samples, index.rejects)
