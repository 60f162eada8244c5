"""The `data` config section: the bucket table (SPEC section 4) and how shards are written and read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_moviegen.config.schema import ConfigError


def _paper_aspect_ratios() -> list[str]:
    return ["9:16", "3:4", "1:1", "4:3", "16:9"]


def _paper_durations() -> list[float]:
    return [4.0, 7.0, 10.0, 13.0, 16.0]


def parse_aspect_ratio(text: str) -> float:
    """'16:9' (width:height) -> 1.777..."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().replace(".", "", 1).isdigit() for p in parts) or float(parts[1]) == 0:
        raise ConfigError(f"aspect_ratios: got {text!r}, expected 'width:height' like '16:9'")
    return float(parts[0]) / float(parts[1])


@dataclass
class BucketConfig:
    """Aspect ratios x durations at one resolution (paper: 5 x 5, 4-16 s). A bucket of duration d seconds
    holds round(d * frame_rate) frames; a clip sampled at f fps fills it with round(d * frame_rate) / f seconds."""

    resolution: int = 768  # a bucket has about resolution**2 pixels
    aspect_ratios: list[str] = field(default_factory=_paper_aspect_ratios)  # width:height
    durations_s: list[float] = field(default_factory=_paper_durations)
    frame_rate: float = 16.0
    # Clips are sampled at their native fps clamped to [min_fps, max_fps] (paper: native, at least 16)...
    min_fps: float = 16.0
    max_fps: Optional[float] = None
    # ...or, when listed, at one of these fixed rates (paper SFT: 16 and 24 fps). Per clip: the rates at or
    # below its native fps (else the lowest), then those filling the longest bucket, then the lowest of them (the
    # most seconds of the clip): for the 256-frame bucket, 16 s clips at 16 fps, 10.67-16 s clips at 24 fps.
    sample_fps: list[float] = field(default_factory=list)
    size_multiple: int = 16  # TAE 8x times the DiT's 2x2 patch
    # Reject a source that must be enlarged by more than this factor to cover its bucket.
    max_upscale: float = 1.0
    include_images: bool = True

    def validate(self) -> None:
        if self.resolution < self.size_multiple:
            raise ConfigError(f"resolution: got {self.resolution}, must be >= size_multiple {self.size_multiple}")
        if self.size_multiple < 1:
            raise ConfigError(f"size_multiple: got {self.size_multiple}, must be >= 1")
        if not self.aspect_ratios:
            raise ConfigError("aspect_ratios: need at least one")
        for text in self.aspect_ratios:
            parse_aspect_ratio(text)
        if not self.durations_s and not self.include_images:
            raise ConfigError("durations_s: empty and include_images is false, so no bucket exists")
        if any(d <= 0 for d in self.durations_s) or len(set(self.durations_s)) != len(self.durations_s):
            raise ConfigError(f"durations_s: got {self.durations_s}, need distinct values > 0")
        if self.frame_rate <= 0 or self.min_fps <= 0:
            raise ConfigError(f"frame_rate/min_fps: got {self.frame_rate}/{self.min_fps}, must be > 0")
        if self.max_fps is not None and self.max_fps < self.min_fps:
            raise ConfigError(f"max_fps: got {self.max_fps}, must be >= min_fps {self.min_fps}")
        if any(f <= 0 for f in self.sample_fps) or len(set(self.sample_fps)) != len(self.sample_fps):
            raise ConfigError(f"sample_fps: got {self.sample_fps}, need distinct rates > 0")
        if self.max_upscale < 1.0:
            raise ConfigError(f"max_upscale: got {self.max_upscale}, must be >= 1.0")


@dataclass
class SecondOrderConfig:
    """Real-ESRGAN's second-order degradation (Wang et al. 2021), as the paper degrades the upsampler's inputs: two
    rounds, each a Gaussian blur, a resize, Gaussian noise and a compression (per-frame JPEG, or the clip through
    H.264) in a random order, then the resize to the low-res size. Each value is drawn uniformly from its [low, high]
    per sample and round; a round's step is skipped with probability `skip_prob`."""

    blur_sigma: tuple[float, float] = (0.2, 2.0)  # pixels at the size the round works at
    resize_scale: tuple[float, float] = (0.6, 1.4)
    noise_std: tuple[float, float] = (0.0, 0.04)  # pixels in [-1, 1]
    jpeg_quality: tuple[int, int] = (40, 95)
    h264_crf: tuple[int, int] = (20, 36)
    video_compression_prob: float = 0.5  # a round compresses with H.264 instead of JPEG
    skip_prob: float = 0.2

    def validate(self) -> None:
        for name in ("blur_sigma", "resize_scale", "noise_std", "jpeg_quality", "h264_crf"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ConfigError(f"second_order.{name}: got {[low, high]}, need 0 <= low <= high")
        if self.blur_sigma[0] <= 0 or self.resize_scale[0] <= 0 or self.jpeg_quality[1] > 100 or self.h264_crf[1] > 51:
            raise ConfigError(f"second_order: blur_sigma and resize_scale must be > 0, jpeg_quality <= 100, h264_crf <= 51; "
                              f"got {list(self.blur_sigma)}, {list(self.resize_scale)}, {list(self.jpeg_quality)}, "
                              f"{list(self.h264_crf)}")
        for name in ("video_compression_prob", "skip_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"second_order.{name}: got {getattr(self, name)}, must be in [0, 1]")


@dataclass
class UpsampleConfig:
    """Spatial-upsampler pairs (SPEC section 5): from the same decoded frames, the high-res target and a low-res
    version (downscaled by `low_resolution_factor`, degraded, bilinearly upsampled back) whose latents become
    the sample's condition channels. The paper: 768 px -> 1080p (factor 1080 / 768 = 1.40625), bilinear."""

    low_resolution_factor: float = 1.40625
    # bilinear: downscale only; blur: a Gaussian of `blur_sigma` low-res pixels first; noise: Gaussian noise of
    # `noise_std` (pixels in [-1, 1]) added to the low-res frames; second_order: the paper's Real-ESRGAN-style
    # degradations (`second_order`'s ranges, data/degrade.py). Random draws are seeded by the sample's manifest index.
    degradation: Literal["bilinear", "blur", "noise", "second_order"] = "bilinear"
    blur_sigma: float = 1.0
    noise_std: float = 0.02
    second_order: SecondOrderConfig = field(default_factory=lambda: SecondOrderConfig())

    def validate(self) -> None:
        if self.low_resolution_factor <= 1.0:
            raise ConfigError(f"low_resolution_factor: got {self.low_resolution_factor}, must be > 1")
        if self.blur_sigma <= 0 or self.noise_std < 0:
            raise ConfigError(f"blur_sigma/noise_std: got {self.blur_sigma}/{self.noise_std}, need > 0 and >= 0")
        self.second_order.validate()


@dataclass
class EditConfig:
    """Video-editing pairs (Movie Gen Edit, SPEC section 6): each manifest entry's `source` (the unedited video or
    image) is decoded with the same clip request as its target (`path`), and its latents become the sample's
    Conditioning.channels; the entry's `task` (default `default_task`) indexes `tasks`, the DiT's task-embedding
    table (model.num_tasks = len(tasks)). The caption is the instruction."""

    tasks: list[str] = field(default_factory=lambda: ["image_edit", "video_edit"])
    default_task: str = "video_edit"

    def validate(self) -> None:
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"edit.tasks: got {self.tasks}, need at least one name, no repeats")
        if self.default_task not in self.tasks:
            raise ConfigError(f"edit.default_task: got {self.default_task!r}, not in edit.tasks {self.tasks}")

    def task_id(self, name: str | None) -> int:
        """A manifest entry's task name (None: default_task) -> its index in `tasks`."""
        name = self.default_task if name is None else name
        if name not in self.tasks:
            raise ValueError(f"task: got {name!r}, expected one of data.edit.tasks {self.tasks}")
        return self.tasks.index(name)


REFERENCE_SOURCE = "reference_image"  # the model.extra_context name of the reference image's tokens


@dataclass
class ReferenceConfig:
    """Personalized video (PT2V, SPEC section 6): each sample is conditioned on a reference image of its subject,
    encoded by a CLIP vision tower (`models.vision_tower`: frozen, its tokens cached by pre-encoding, or `trainable`
    in the DiT) into the cross-attention source model.extra_context.reference_image (width = the tower's hidden size, max_length = this one).

    The manifest gives each entry's reference: `reference` (an image, or a video with `reference_time` in seconds)
    or `subject` (an id: a frame of another clip of the same subject; see data.manifest). `crop`, when set, is a
    "package.module:function" taking and returning one (h, w, 3) uint8 frame, applied before the tower's resize:
    the place for a face detector's crop: "megatron_moviegen.data.face_crop:crop_face" (OpenCV's cascade, the
    paper's masking of all but the face; the `face` extra) ships, any other plugs in the same way."""

    encoder: str = "facebook/metaclip-h14-fullcc2.5b"  # a CLIPVisionModel folder or hub id
    max_length: int = 264  # ViT-H/14 at 224 px gives 257 tokens; padded to a multiple of 8 for TP x SP
    crop: Optional[str] = None
    # False: the tower is frozen and pre-encoding caches its tokens (Conditioning.tokens). True: the paper's
    # trainable tower: pre-encoding caches the tower's input pixels (Conditioning.images) and the tower is part of
    # the DiT (model.extra_context.reference_image.encoder, started from `encoder`'s weights).
    trainable: bool = False
    device: str = "auto"  # auto: this rank's runtime device
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on CPU

    def validate(self) -> None:
        if not self.encoder:
            raise ConfigError("encoder: empty; give a CLIPVisionModel folder or hub id")
        if self.max_length < 1:
            raise ConfigError(f"max_length: got {self.max_length}, must be >= 1")
        if self.crop is not None and (self.crop.count(":") != 1 or not all(self.crop.split(":"))):
            raise ConfigError(f"crop: got {self.crop!r}, expected 'package.module:function'")


@dataclass
class AudioDataConfig:
    """Movie Gen Audio samples (SPEC section 7). Each manifest entry's audio (PyAV, resampled to `sample_rate` and
    mixed to `channels`) is cut to the longest of `durations_s` it fills from its start and encoded by the audio
    autoencoder into the sample's latents (c, T, 1, 1), T = duration x `latent_rate` (the autoencoder's rate, checked
    at pre-encoding). Its video, when it has one, is sampled at the latent rate (one frame per latent frame, resized
    to cover `frame_size` px) and encoded frame by frame by the CLIP vision tower `video_encoder` (its pooled
    output): the sample's Conditioning.channels (width, T, 1, 1), which the audio DiT adds to its tokens; a file
    without video gets zeros there (as a dropped video: text-to-audio). The caption is the text prompt."""

    sample_rate: int = 48000
    channels: int = 1
    latent_rate: float = 25.0
    durations_s: list[float] = field(default_factory=lambda: [10.0])
    video_encoder: str = "facebook/metaclip-h14-fullcc2.5b"  # a CLIPVisionModel folder or hub id
    frame_size: int = 224
    device: str = "auto"  # the vision tower's; auto: this rank's runtime device
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on CPU

    def validate(self) -> None:
        if self.sample_rate < 1 or self.channels not in (1, 2):
            raise ConfigError(f"sample_rate/channels: got {self.sample_rate}/{self.channels}, need a rate >= 1 and "
                              "1 (mono) or 2 (stereo) channels")
        if not self.latent_rate > 0 or self.frame_size < 1:
            raise ConfigError(f"latent_rate/frame_size: got {self.latent_rate}/{self.frame_size}, must be > 0")
        if not self.durations_s or len(set(self.durations_s)) != len(self.durations_s):
            raise ConfigError(f"durations_s: got {self.durations_s}, need distinct durations")
        for duration in self.durations_s:
            frames = duration * self.latent_rate
            if duration <= 0 or abs(frames - round(frames)) > 1e-6:
                raise ConfigError(f"durations_s: {duration} s is not a positive whole number of latent frames at "
                                  f"latent_rate {self.latent_rate} ({frames:g})")
        if not self.video_encoder:
            raise ConfigError("video_encoder: empty; give a CLIPVisionModel folder or hub id")

    def latent_frames(self) -> list[int]:
        """The buckets: latent frames of each duration, ascending."""
        return sorted(round(d * self.latent_rate) for d in self.durations_s)


@dataclass
class DataConfig:
    """Where latent shards live, how they are written (pre-encoding) and read (training)."""

    buckets: BucketConfig = field(default_factory=BucketConfig)
    shards: str = "data/latents"  # folder of WebDataset tar shards with .nv-meta/
    # Training loader.
    # Standalone LatentLoader use. Training reads global_batch_size / DP samples of ONE bucket per step
    # (SPEC: each batch holds one bucket) and splits them into microbatches; this field is then unused.
    batch_size: int = 1
    image_fraction: float = 0.1  # share of batches that are images (paper stage 2: images 1:10)
    seed: int = 1234
    # A resume whose shard index (shards, their sample counts and records) differs from the checkpoint's is refused,
    # naming the change; true: warn and go on from the saved epoch and batch of the new index's data order.
    allow_changed_shards: bool = False
    # Training: batches read ahead of the loop by a background thread on each TP group's reading rank (0: read when
    # the loop asks; data/feeder.py).
    prefetch_batches: int = 2
    # Pre-encoding.
    shard_size: int = 64  # manifest entries per shard
    encode_batch_size: int = 4
    num_workers: int = 2  # decode processes
    decoder: Literal["pyav", "dali-gpu", "dali-cpu"] = "pyav"
    latent_dtype: Literal["bfloat16", "float32"] = "bfloat16"
    # The TAE encode's autocast (its weights stay float32): auto: bfloat16 on CUDA, float32 on CPU.
    tae_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    # An OSError reading a source (an NFS/Lustre hiccup) is retried this many times, after waits of
    # io_retry_delay_s, 2x, 4x, ... (defaults: 0.5, 1, 2 s), before the entry is rejected with kind "io".
    # A missing file or a permission error is rejected at once (still "io": --retry-rejects reads it again).
    io_retries: int = 3
    io_retry_delay_s: float = 0.5
    # A first run over a .jsonl manifest: the other ranks wait up to this long for the manifest index rank 0 writes
    # on its pass (data/manifest_index.py), then read only their own lines; 0 (or the wait running out): each reads
    # the manifest whole itself. A rerun finds the index published and does not wait.
    manifest_index_wait_s: float = 3600.0
    # Set for the spatial upsampler: pre-encoding also writes the degraded low-res clip's latents as the
    # sample's Conditioning.channels (model.condition_channels = latent channels).
    upsample: Optional[UpsampleConfig] = None
    # Set for video editing: manifest entries are (source, instruction, target) triples; pre-encoding writes the
    # source's latents as Conditioning.channels and the task index as Conditioning.task (EditConfig).
    edit: Optional[EditConfig] = None
    # Set for personalized video: each entry's reference image is encoded into the sample's
    # Conditioning.tokens["reference_image"] (ReferenceConfig).
    reference: Optional[ReferenceConfig] = None
    # Set for Movie Gen Audio: samples are a file's audio latents conditioned on its caption and per-frame video
    # features (AudioDataConfig); `buckets` then does not apply.
    audio: Optional[AudioDataConfig] = None

    def validate(self) -> None:
        for name in ("batch_size", "shard_size", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, must be >= 1")
        if self.io_retries < 0 or not self.io_retry_delay_s >= 0:
            raise ConfigError(f"io_retries/io_retry_delay_s: got {self.io_retries}/{self.io_retry_delay_s}, "
                              "must be >= 0")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: got {self.num_workers}, must be >= 0")
        if not self.manifest_index_wait_s >= 0:
            raise ConfigError(f"manifest_index_wait_s: got {self.manifest_index_wait_s}, must be >= 0")
        if self.prefetch_batches < 0:
            raise ConfigError(f"prefetch_batches: got {self.prefetch_batches}, must be >= 0")
        if not 0.0 <= self.image_fraction <= 1.0:
            raise ConfigError(f"image_fraction: got {self.image_fraction}, must be in [0, 1]")
        if self.image_fraction > 0 and not self.buckets.include_images:
            raise ConfigError(f"image_fraction: got {self.image_fraction} but buckets.include_images is false")
        if self.upsample is not None and self.edit is not None:
            raise ConfigError("data.upsample and data.edit are both set; a sample's condition channels are one or "
                              "the other")
        if self.audio is not None and any(x is not None for x in (self.upsample, self.edit, self.reference)):
            raise ConfigError("data.audio is set with data.upsample, data.edit or data.reference; those are video "
                              "conditions")
        if self.audio is not None and self.image_fraction > 0:
            raise ConfigError(f"image_fraction: got {self.image_fraction}, but data.audio samples are never images "
                              "(set 0)")
