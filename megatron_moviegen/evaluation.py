"""What a trained TAE and DiT can do, measured on held-out (or training) clips with known captions:

- the TAE's reconstruction PSNR / SSIM per clip: the ceiling any generated video can reach against it;
- per caption, the DiT's sample (at the clip's bucket, FPS-n and the same seed) against its own clip and against
  every other clip of the same shape: a model that learned the caption is much closer to its own clip;
- a side-by-side PNG: per clip, rows original / TAE reconstruction / generated, a few frames each;
- for an editing model (a recipe with data.edit): per (source, instruction, target) pair, the edit sampled from the
  source against the true target, against the unedited source (the score of doing nothing) and against the
  source's other targets (another instruction's edit), with the TAE's ceiling on the target;
- for a personalized model (a recipe with data.reference): per caption, videos sampled with each subject's
  reference image (the one it trained with and a held-out frame), another subject's, and none, each against every
  subject's clips: the reference, not the caption, should decide who appears;
- for an audio model (a recipe with data.audio): per file, audio generated for its video (and caption) against every
  file's true soundtrack (mel distance, SNR), with the audio autoencoder's reconstruction as the ceiling: a model that
  learned from the video is closer to the soundtrack of the video it was given.

Clips go through pre-encoding's decode and bucketing (`prepare_entry`), so they are exactly what training saw.

    clips = load_reference_clips("heldout.jsonl", cfg.data.buckets)
    report = evaluate(clips, tae, pipeline, steps=50)          # pipeline None: the TAE only
    write_report(report, images, "outputs/eval")               # eval.json + side_by_side.png
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from megatron_moviegen.data.buckets import BucketTable
from megatron_moviegen.data.config import BucketConfig, DataConfig
from megatron_moviegen.data.decode import build_decoder, to_unit_range
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.preencode import Rejected, load_crop, prepare_entry, reference_frame
from megatron_moviegen.inference.editor import EditingConfig, VideoEditor
from megatron_moviegen.inference.pipeline import MovieGenPipeline, SamplingConfig
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.text.prompts import prompt_fps
from megatron_moviegen.utils.io import atomic_output, atomic_write_text
from megatron_moviegen.utils.quality import psnr, ssim
from megatron_moviegen.utils.video_io import to_uint8_frames


@dataclass
class ReferenceClip:
    caption: str
    source: str
    fps: Optional[float]  # None for an image
    pixels: torch.Tensor  # (3, t, h, w) float32 in [-1, 1], the bucket's size


def load_reference_clips(manifest: str | Path, buckets: BucketConfig, decoder: str = "pyav") -> list[ReferenceClip]:
    """Every manifest entry decoded and bucketed as pre-encoding would; raises on one it would reject."""
    table, reader = BucketTable(buckets), build_decoder(decoder)
    clips = []
    for index, entry in enumerate(read_manifest(manifest)):
        prepared = prepare_entry(index, entry, table, reader)
        if isinstance(prepared, Rejected):
            raise ValueError(f"{entry.path}: pre-encoding would reject it ({prepared.reason})")
        fps = None if prepared.bucket.is_image else prepared.fps
        clips.append(ReferenceClip(entry.caption, entry.path, fps, to_unit_range(prepared.frames)))
    return clips


def quality(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of two (3, t, h, w) videos in [-1, 1]."""
    return {"psnr": psnr(a, b, data_range=2.0), "ssim": ssim(a, b, data_range=2.0)}


@torch.no_grad()
def tae_reconstruction(tae: TAE, pixels: torch.Tensor) -> torch.Tensor:
    """(3, t, h, w) in [-1, 1] -> the TAE's reconstruction (posterior mean, tiled), same shape, clamped."""
    param = next(tae.parameters())
    latents = tae.encode(pixels[None].to(param.device, param.dtype), tiled=True).mode()
    return tae.decode(latents, num_frames=pixels.shape[1], tiled=True)[0].float().cpu().clamp(-1, 1)


def evaluate(clips: list[ReferenceClip], tae: TAE, pipeline: Optional[MovieGenPipeline] = None, steps: int = 50,
             guidance_scale: float = 7.5, seed: int = 0) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """The report (JSON-ready) and, per clip, the videos {"original", "tae", "generated"?} for `side_by_side`.
    With a pipeline every rank of its model-parallel group must call this (sampling is collective)."""
    rows, videos = [], []
    for clip in clips:
        recon = tae_reconstruction(tae, clip.pixels)
        row = {"caption": clip.caption, "source": clip.source, "fps": clip.fps,
               "shape": list(clip.pixels.shape), "tae": quality(recon, clip.pixels)}
        video = {"original": clip.pixels, "tae": recon}
        if pipeline is not None:
            _, t, h, w = clip.pixels.shape
            settings = SamplingConfig(num_frames=t, height=h, width=w, fps=prompt_fps(clip.fps) or 16, steps=steps,
                                      guidance_scale=guidance_scale, seed=seed)
            generated = pipeline.decode(pipeline.sample_latents([clip.caption], settings, progress=False), t)[0].cpu()
            row["generated"] = quality(generated, clip.pixels)
            row["generated_vs_others"] = {other.caption: quality(generated, other.pixels) for other in clips
                                          if other is not clip and other.pixels.shape == clip.pixels.shape}
            video["generated"] = generated
        rows.append(row)
        videos.append(video)
    return {"clips": rows, "steps": steps, "guidance_scale": guidance_scale, "seed": seed}, videos


def add_distribution_scores(report: dict, videos: list[dict[str, torch.Tensor]], fvd_model: Optional[str] = None,
                            clip_model: Optional[str] = None) -> dict:
    """`report["distribution"]`: FVD of the TAE reconstructions and of the generated videos against the original
    clips (with the VideoMAE in `fvd_model`), and the CLIP score of the originals and the generated videos against
    their captions (with the CLIPModel in `clip_model`); each only when its model folder is given
    (utils/distribution.py: networks from local folders only)."""
    from megatron_moviegen.utils.distribution import clip_score, frechet_video_distance
    from megatron_moviegen.utils.video_io import to_uint8_frames

    sets = {name: [torch.from_numpy(to_uint8_frames(v[name])) for v in videos]
            for name in ("original", "tae", "generated") if all(name in v for v in videos)}
    scores: dict = {}
    if fvd_model:
        scores["fvd"] = {name: frechet_video_distance(sets["original"], sets[name], fvd_model)
                         for name in ("tae", "generated") if name in sets}
    if clip_model:
        captions = [row["caption"] for row in report["clips"]]
        scores["clip_score"] = {name: clip_score(sets[name], captions, clip_model)
                                for name in ("original", "generated") if name in sets}
    if scores:
        report["distribution"] = {**scores, "fvd_model": fvd_model, "clip_model": clip_model}
    return report


@dataclass
class EditPair:
    instruction: str
    source: str
    target: str
    fps: Optional[float]  # None for an image
    source_pixels: torch.Tensor  # (3, t, h, w) float32 in [-1, 1], the bucket's size
    target_pixels: torch.Tensor  # the same shape


def load_edit_pairs(manifest: str | Path, data: DataConfig) -> list[EditPair]:
    """Every (source, instruction, target) entry decoded and bucketed as pre-encoding would (data.edit set)."""
    if data.edit is None:
        raise ValueError("load_edit_pairs: the recipe has no data.edit section")
    table, reader = BucketTable(data.buckets), build_decoder(data.decoder)
    pairs = []
    for index, entry in enumerate(read_manifest(manifest)):
        prepared = prepare_entry(index, entry, table, reader, edit=data.edit)
        if isinstance(prepared, Rejected):
            raise ValueError(f"{entry.path}: pre-encoding would reject it ({prepared.reason})")
        fps = None if prepared.bucket.is_image else prepared.fps
        pairs.append(EditPair(entry.caption, entry.source, entry.path, fps, to_unit_range(prepared.source_frames),
                              to_unit_range(prepared.frames)))
    return pairs


def evaluate_edits(pairs: list[EditPair], editor: VideoEditor, settings: EditingConfig
                   ) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """The report and, per pair, the videos {"source", "target", "tae", "edited"} for `side_by_side`. Each edit is
    sampled from the source's latents with `settings` (its fps from the pair). Every rank of the editor's
    model-parallel group must call this."""
    rows, videos = [], []
    for pair in pairs:
        recon = tae_reconstruction(editor.tae, pair.target_pixels)
        frames = pair.source_pixels.shape[1]
        run = replace(settings, fps=prompt_fps(pair.fps) or settings.fps)
        edited = editor.edit(pair.source_pixels[None], pair.instruction, run)[0].cpu()
        rows.append({
            "instruction": pair.instruction, "source": pair.source, "target": pair.target, "fps": pair.fps,
            "shape": list(pair.target_pixels.shape), "tae": quality(recon, pair.target_pixels),
            "edited": quality(edited, pair.target_pixels),
            "source_vs_target": quality(pair.source_pixels, pair.target_pixels),
            "edited_vs_other_targets": {other.instruction: quality(edited, other.target_pixels) for other in pairs
                                        if other is not pair and other.source == pair.source
                                        and other.target_pixels.shape == pair.target_pixels.shape},
            "frames": frames,
        })
        videos.append({"source": pair.source_pixels, "target": pair.target_pixels, "tae": recon, "edited": edited})
    return {"pairs": rows, "steps": settings.steps, "guidance_scale": settings.guidance_scale,
            "source_guidance_scale": settings.source_guidance_scale, "seed": settings.seed}, videos


def format_edit_table(report: dict) -> str:
    """One line per pair: the TAE ceiling on the target, edited vs target, source vs target (doing nothing),
    edited vs the source's closest other target."""
    lines = [f"{'source':<20} {'instruction':<28} {'TAE ceiling':>12} {'edited':>13} {'unedited':>13} "
             f"{'other edit':>13}   (PSNR dB/SSIM vs the true edit)"]
    for row in report["pairs"]:
        name = Path(row["source"]).parent.name or Path(row["source"]).stem
        others = row["edited_vs_other_targets"]
        best = max(others.values(), key=lambda q: q["psnr"]) if others else None
        lines.append(f"{name[:20]:<20} {row['instruction'][:28]:<28} {_q(row['tae']):>12} {_q(row['edited']):>13} "
                     f"{_q(row['source_vs_target']):>13} {(_q(best) if best else '-'):>13}")
    return "\n".join(lines)


@dataclass
class SubjectClip:
    subject: str
    caption: str
    source: str
    start_s: float
    fps: Optional[float]  # None for an image
    pixels: torch.Tensor  # (3, t, h, w) float32 in [-1, 1], the bucket's size
    reference: torch.Tensor  # (h, w, 3) uint8: the reference image pre-encoding gave this clip
    reference_path: str
    reference_time: float

    @property
    def reference_name(self) -> str:
        return f"{Path(self.reference_path).name}@{self.reference_time:g}s"


def load_subject_clips(manifest: str | Path, data: DataConfig) -> list[SubjectClip]:
    """Every entry of a personalization manifest (data.reference set; each entry with a `subject`) decoded and
    bucketed as pre-encoding would, with the reference frame it gave that entry."""
    if data.reference is None:
        raise ValueError("load_subject_clips: the recipe has no data.reference section")
    table, reader = BucketTable(data.buckets), build_decoder(data.decoder)
    clips = []
    for index, entry in enumerate(read_manifest(manifest)):
        if entry.subject is None:
            raise ValueError(f"{entry.path}: a personalization evaluation needs a 'subject' for every entry")
        prepared = prepare_entry(index, entry, table, reader, reference=data.reference)
        if isinstance(prepared, Rejected):
            raise ValueError(f"{entry.path}: pre-encoding would reject it ({prepared.reason})")
        fps = None if prepared.bucket.is_image else prepared.fps
        clips.append(SubjectClip(entry.subject, entry.caption, entry.path, entry.start_s, fps,
                                 to_unit_range(prepared.frames), prepared.reference_frame, entry.reference,
                                 entry.reference_time or 0.0))
    return clips


def held_out_reference(clips: list[SubjectClip], data: DataConfig) -> tuple[torch.Tensor, str]:
    """A frame of one subject's `clips` that no entry used as its reference (references are clip starts): the middle
    of its last clip's window, moved on by a quarter window while it is within a frame of a reference; through
    data.reference.crop."""
    clip = clips[-1]
    fps = clip.fps or 1.0
    window = clip.pixels.shape[1] / fps if clip.fps else 0.0
    used = [c.reference_time for c in clips if c.reference_path == clip.source]
    time = clip.start_s + window / 2
    while window and any(abs(time - t) < 1.0 / fps for t in used):
        time += window / 4
    frame = reference_frame(clip.source, time, build_decoder(data.decoder), load_crop(data.reference.crop))
    return frame, f"{Path(clip.source).name}@{time:.2f}s"


def evaluate_personalization(clips: list[SubjectClip], pipeline: MovieGenPipeline, data: DataConfig, steps: int = 50,
                             guidance_scale: float = 7.5, seed: int = 0) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """Does the reference image (not the caption) select who appears? Per caption, with its first clip's bucket and
    one seed, a video is sampled (a) with the reference its clips trained with, (b) with a held-out frame
    of it, (c) with another subject's reference and (d) with none; each is scored (PSNR/SSIM) against every
    subject's clips, best clip per subject. Every rank of the pipeline's model-parallel group must call this."""
    subjects = list(dict.fromkeys(clip.subject for clip in clips))
    first = {subject: next(c for c in clips if c.subject == subject) for subject in subjects}
    references = []  # (label, subject shown, frame)
    for subject in subjects:
        references.append((f"{subject}: trained {first[subject].reference_name}", subject, first[subject].reference))
        frame, name = held_out_reference([c for c in clips if c.subject == subject], data)
        references.append((f"{subject}: held-out {name}", subject, frame))
    rows, videos = [], []
    by_caption = {clip.caption: clip for clip in reversed(clips)}  # each caption's first clip
    for clip in (by_caption[caption] for caption in dict.fromkeys(c.caption for c in clips)):
        _, t, h, w = clip.pixels.shape
        settings = SamplingConfig(num_frames=t, height=h, width=w, fps=prompt_fps(clip.fps) or 16, steps=steps,
                                  guidance_scale=guidance_scale, seed=seed)
        for label, shown, frame in references + [("no reference", None, None)]:
            generated = pipeline.decode(pipeline.sample_latents([clip.caption], settings, False, frame), t)[0].cpu()
            scores = {subject: max((quality(generated, other.pixels) for other in clips
                                    if other.subject == subject and other.pixels.shape == clip.pixels.shape),
                                   key=lambda q: q["psnr"]) for subject in subjects}
            rows.append({"caption": clip.caption, "caption_of": clip.subject, "reference": label,
                         "reference_subject": shown, "vs_subject": scores})
            videos.append({"reference clip" if shown else "caption's clip": (first[shown] if shown else clip).pixels,
                           "generated": generated})
    ceiling = {subject: quality(tae_reconstruction(pipeline.tae, first[subject].pixels), first[subject].pixels)
               for subject in subjects}
    return {"subjects": subjects, "tae_ceiling": ceiling, "rows": rows, "steps": steps,
            "guidance_scale": guidance_scale, "seed": seed}, videos


def format_personalization_table(report: dict) -> str:
    """One line per (caption, reference): PSNR dB/SSIM of the generated video against each subject's best clip;
    the subject the reference shows should win its line."""
    subjects = report["subjects"]
    lines = [f"{'caption':<20} {'reference':<44} " + " ".join(f"{'vs ' + s:>14}" for s in subjects)
             + "   (PSNR dB/SSIM, best clip of each subject)",
             f"{'':<20} {'TAE ceiling':<44} " + " ".join(f"{_q(report['tae_ceiling'][s]):>14}" for s in subjects)]
    for row in report["rows"]:
        lines.append(f"{row['caption'][:20]:<20} {row['reference'][:44]:<44} "
                     + " ".join(f"{_q(row['vs_subject'][s]):>14}" for s in subjects))
    return "\n".join(lines)


def _q(quality: dict) -> str:
    return f"{quality['psnr']:.2f}/{quality['ssim']:.3f}"


def side_by_side(videos: list[dict[str, torch.Tensor]], frames: int = 4, gap: int = 2) -> np.ndarray:
    """(H, W, 3) uint8: per clip, one row per video kind in the dict's order (e.g. original, tae, generated),
    `frames` frames spread over the clip; clips of different sizes are padded to the widest."""
    rows = []
    for video in videos:
        for pixels in video.values():
            pixels = to_uint8_frames(pixels)  # (t, h, w, 3)
            picks = np.linspace(0, pixels.shape[0] - 1, min(frames, pixels.shape[0])).round().astype(int)
            tiles = [np.pad(pixels[i], ((0, 0), (0, gap), (0, 0)), constant_values=255) for i in picks]
            rows.append(np.pad(np.concatenate(tiles, axis=1), ((0, gap), (0, 0), (0, 0)), constant_values=255))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def format_table(report: dict) -> str:
    """One line per clip: the TAE ceiling, generated vs its own clip, generated vs the closest other clip; then the
    distribution scores when measured."""
    lines = [f"{'caption':<44} {'TAE PSNR/SSIM':>15} {'gen vs own':>15} {'gen vs other (best)':>20}"]
    for row in report["clips"]:
        line = f"{row['caption'][:44]:<44} {row['tae']['psnr']:>7.2f}/{row['tae']['ssim']:.3f}"
        if "generated" in row:
            line += f" {row['generated']['psnr']:>7.2f}/{row['generated']['ssim']:.3f}"
            others = row["generated_vs_others"]
            if others:
                best = max(others.values(), key=lambda q: q["psnr"])
                line += f" {best['psnr']:>12.2f}/{best['ssim']:.3f}"
        lines.append(line)
    distribution = report.get("distribution", {})
    for metric in ("fvd", "clip_score"):
        if metric in distribution:
            lines.append(f"{metric}: " + ", ".join(f"{name} {value:.2f}" for name, value in distribution[metric].items()))
    return "\n".join(lines)


def write_report(report: dict, videos: list[dict[str, torch.Tensor]], out_dir: str | Path,
                 frames: int = 4) -> tuple[Path, Path]:
    """out_dir/eval.json and out_dir/side_by_side.png, each written atomically."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "eval.json", json.dumps(report, indent=2) + "\n")
    png = out_dir / "side_by_side.png"
    with atomic_output(png) as tmp:
        Image.fromarray(side_by_side(videos, frames)).save(tmp, format="PNG")
    return out_dir / "eval.json", png


# ---- audio (data.audio) ------------------------------------------------------------------------------------------

@dataclass
class SoundClip:
    caption: str
    source: str
    seconds: float
    waveform: torch.Tensor  # (channels, n) float32 in [-1, 1] at data.audio.sample_rate
    frames: Optional[torch.Tensor]  # (T, s, s, 3) uint8, one per latent frame; None without video

    @property
    def name(self) -> str:
        return Path(self.source).name


def load_sound_clips(manifest: str | Path, audio) -> list[SoundClip]:
    """Each file of an audio manifest once (the first entry naming it gives the caption), whole: from 0 s to where
    its audio or video ends, as many whole latent frames as that holds; its video frames sampled as pre-encoding
    samples them (`data.audio`: an AudioDataConfig)."""
    from megatron_moviegen.data.audio import probe_audio, read_audio
    from megatron_moviegen.inference.audio import read_video_frames

    clips, seen = [], set()
    for entry in read_manifest(manifest):
        if entry.path in seen:
            continue
        seen.add(entry.path)
        info = probe_audio(entry.path)
        end = min(x for x in (info.duration_s, info.video_duration_s) if x is not None)
        frames = int(end * audio.latent_rate)
        seconds = frames / audio.latent_rate
        clips.append(SoundClip(entry.caption, entry.path, seconds,
                               read_audio(entry.path, audio.sample_rate, audio.channels, duration_s=seconds),
                               read_video_frames(entry.path, frames, audio) if info.video_duration_s else None))
    return clips


def audio_scores(a: torch.Tensor, b: torch.Tensor, sample_rate: int) -> dict[str, float]:
    """mel distance and SNR (dB) of waveform `a` against `b` (channels, n), over their common length."""
    from megatron_moviegen.models.audio_losses import mel_distance, snr_db

    n = min(a.shape[-1], b.shape[-1])
    a, b = a[None, :, :n].float(), b[None, :, :n].float()
    return {"mel": mel_distance(a, b, sample_rate), "snr": snr_db(a, b)}


def spectrogram_picture(waveform: torch.Tensor, sample_rate: int, n_fft: int = 1024, n_mels: int = 80) -> torch.Tensor:
    """(channels, n) -> a log-mel picture (3, 1, n_mels, frames) in [-1, 1], low frequencies at the bottom (log10 mel
    magnitudes -5 to 1 mapped to black to white), a 1-frame video for `side_by_side`."""
    from megatron_moviegen.models.audio_losses import mel_filterbank, mel_spectrogram

    mels = mel_spectrogram(waveform[None, :1].float(), mel_filterbank(sample_rate, n_fft, n_mels), n_fft)[0]
    picture = ((mels.clamp(min=1e-5).log10() + 5.0) / 3.0 - 1.0).clamp(-1.0, 1.0).flip(0)  # (n_mels, frames)
    return picture.expand(3, 1, *picture.shape)


def evaluate_audio(clips: list[SoundClip], pipeline, settings) -> tuple[dict, list[dict[str, torch.Tensor]]]:
    """Is the audio generated for a video that video's sound? Per clip, audio is sampled for its video and caption
    (`settings`: an AudioSamplingConfig; windows when the clip is longer than one) and scored against every clip's
    true soundtrack, beside the autoencoder's reconstruction of its own (the ceiling). Every rank of the pipeline's
    model-parallel group must call this; the pictures are log-mel spectrograms (true, reconstructed, generated)."""
    autoencoder, rate = pipeline.autoencoder, pipeline.autoencoder.cfg.sample_rate
    rows, pictures = [], []
    device = next(autoencoder.parameters()).device
    for clip in clips:
        frames = pipeline.num_frames(clip.seconds)
        features = pipeline.video_features(clip.frames, frames)
        generated = pipeline.decode(pipeline.sample_latents(clip.caption, features, settings), clip.waveform.shape[1])
        with torch.no_grad():
            target = clip.waveform[None].to(device)
            reconstruction = autoencoder.decode(autoencoder.encode(target).mode(), target.shape[-1])[0].float().cpu()
        rows.append({"video": clip.name, "caption": clip.caption, "seconds": clip.seconds,
                     "ceiling": audio_scores(reconstruction, clip.waveform, rate),
                     "vs": {other.name: audio_scores(generated, other.waveform, rate) for other in clips}})
        pictures.append({name: spectrogram_picture(w, rate) for name, w in
                         (("true", clip.waveform), ("autoencoder", reconstruction), ("generated", generated))})
    return {"clips": rows, "steps": settings.steps, "solver": settings.solver, "schedule": settings.schedule,
            "guidance_scale": settings.guidance_scale, "seed": settings.seed}, pictures


def format_audio_table(report: dict) -> str:
    """One line per video: mel distance (SNR dB) of its generated audio against each soundtrack, and the
    autoencoder's ceiling against its own; the video's own soundtrack should be the closest."""
    names = [row["video"] for row in report["clips"]]
    lines = [f"{'video given':<28} {'ceiling (AE)':>16} " + " ".join(f"{'vs ' + n[:18]:>24}" for n in names)
             + "   (mel distance, lower is closer / SNR dB)"]
    for row in report["clips"]:
        cells = [f"{row['vs'][n]['mel']:.3f} / {row['vs'][n]['snr']:.1f}" for n in names]
        lines.append(f"{row['video'][:28]:<28} {row['ceiling']['mel']:>8.3f} / {row['ceiling']['snr']:.1f} "
                     + " ".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)
