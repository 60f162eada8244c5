"""Long-prompt MetaCLIP fine-tuning (SPEC section 1: MetaCLIP's text tower taken from 77 to 256 positions and
fine-tuned). A whole `transformers.CLIPModel` (the hub's facebook/metaclip-h14-fullcc2.5b is one) gets the stretched
position table of `metaclip.extend_clip_context`, then trains contrastively (CLIP's symmetric InfoNCE,
`CLIPModel(..., return_loss=True)`) on (image, long caption) pairs of a manifest, so dense captions no longer enter
through untrained positions. The vision tower and visual projection stay frozen by default, so the image space other
users of the tower rely on (audio's video features, personalization's references) is unchanged.

    python tools/finetune_long_clip.py --config long_clip --out runs/long_clip data.manifest=pairs.jsonl

The run folder holds `checkpoint/`: `save_pretrained` of the CLIPModel and its tokenizer (model_max_length 256) plus
`train_state.pt` (step, optimizer, RNG), replaced whole at every save (staged, then renamed). Pre-encoding reads it
as it is (`tools/preencode_latents.py --text-encoders paper --text metaclip.path=<out>/checkpoint`: text/encoders.py
loads its text tower at 256 positions). A restarted job continues from that checkpoint: same step, optimizer
moments, RNG and batch order (a function of seed and step).

One process (one GPU): data parallelism, which would all-gather the embeddings so every rank scores against the
global batch, is not built.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm
from transformers import CLIPModel, CLIPTokenizer

from megatron_moviegen.config.schema import ConfigError, load_recipe, to_yaml
from megatron_moviegen.data.decode import PyAVDecoder
from megatron_moviegen.data.manifest import entry_problem, read_manifest
from megatron_moviegen.data.preencode import reference_frame
from megatron_moviegen.models.vision_tower import PROCESSOR_FILE, clip_normalisation, clip_pixels
from megatron_moviegen.runtime import Runtime
from megatron_moviegen.text.encoders import resolve_source
from megatron_moviegen.text.metaclip import extend_clip_context
from megatron_moviegen.utils.hub import hub_offline
from megatron_moviegen.utils.io import atomic_write_text, drop_metrics_after, replacing_folder

RECIPE_DIR = Path(__file__).resolve().parent.parent / "configs" / "long_clip"
CHECKPOINT = "checkpoint"
TRAIN_STATE = "train_state.pt"


@dataclass
class LongClipModelConfig:
    # A whole CLIPModel (folder written by save_pretrained, or a hub id): both towers are needed for the loss.
    path: str = "facebook/metaclip-h14-fullcc2.5b"
    max_length: int = 256  # text positions after stretching (the paper's 256)
    train_vision: bool = False  # vision tower and visual projection; false keeps the image space as it is
    train_text_projection: bool = True
    train_logit_scale: bool = True

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("path: empty; give a CLIPModel folder or hub id")
        if self.max_length < 2:
            raise ConfigError(f"max_length: got {self.max_length}, need >= 2 (start and end tokens)")


@dataclass
class LongClipDataConfig:
    # .jsonl / .csv manifest (data/manifest.py) of images or videos (first frame) with their long captions.
    manifest: str = ""
    # Held-out pairs scored every train.eval_every steps (top-1 retrieval among all of them); None = no evaluation.
    eval_manifest: Optional[str] = None
    batch_size: int = 256
    num_workers: int = 4  # decoding processes

    def validate(self) -> None:
        if not self.manifest:
            raise ConfigError("manifest: empty; give a .jsonl or .csv of (path, caption) pairs")
        if self.eval_manifest is not None and Path(self.eval_manifest).resolve() == Path(self.manifest).resolve():
            raise ConfigError(f"eval_manifest: got {self.eval_manifest!r}, the training manifest; the evaluation "
                              "pairs must be held out")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size: got {self.batch_size}, need >= 2 (the other pairs are the negatives)")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: got {self.num_workers}, need >= 0")


@dataclass
class LongClipOptimConfig:
    steps: int = 10_000
    lr: float = 1e-5
    warmup_steps: int = 500  # linear from 0, then cosine to 0 at `steps`
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    out_dir: str = "runs/long_clip"
    # Continue from out_dir/checkpoint; false refuses an out_dir that already holds one.
    resume: bool = True
    # bf16: forward and loss under bf16 autocast (fp32 weights and optimizer); auto: bf16 on GPU, fp32 on CPU.
    precision: Literal["auto", "bf16", "fp32"] = "auto"

    def validate(self) -> None:
        for name in ("steps", "log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: got {getattr(self, name)}, need >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ConfigError(f"lr/weight_decay/grad_clip: got {self.lr}/{self.weight_decay}/{self.grad_clip}, "
                              "need lr > 0, weight_decay >= 0, grad_clip > 0")
        if not 0 <= self.warmup_steps < self.steps:
            raise ConfigError(f"warmup_steps: got {self.warmup_steps}, need 0 <= warmup_steps < steps ({self.steps})")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"betas: got {tuple(self.betas)}, need each in [0, 1)")


@dataclass
class LongClipConfig:
    name: str = "long_clip"
    model: LongClipModelConfig = field(default_factory=LongClipModelConfig)
    data: LongClipDataConfig = field(default_factory=LongClipDataConfig)
    train: LongClipOptimConfig = field(default_factory=LongClipOptimConfig)


def load_long_clip_config(recipe: str | Path, overrides: list[str] | None = None) -> LongClipConfig:
    """A recipe by name (configs/long_clip/<name>.yaml) or path, with `a.b=value` overrides."""
    return load_recipe(LongClipConfig, recipe, RECIPE_DIR, overrides)


# ---- model ----------------------------------------------------------------------------------------------

@dataclass
class LongClip:
    """A CLIPModel with its text tower stretched to `max_length` positions, its tokenizer and image normalisation
    (mean, std: (1, 3, 1, 1) float32 on the model's device)."""

    model: CLIPModel
    tokenizer: CLIPTokenizer
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def max_length(self) -> int:
        return self.model.config.text_config.max_position_embeddings

    @property
    def image_size(self) -> int:
        return self.model.config.vision_config.image_size

    def tokens(self, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (b, l <= max_length) on the model's device; longer captions truncated."""
        out = self.tokenizer(list(captions), padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: v.to(self.mean.device) for k, v in out.items()}

    def pixels(self, frames: Sequence[torch.Tensor]) -> torch.Tensor:
        """b (h, w, 3) uint8 images -> (b, 3, s, s) float32 normalised input of the vision tower."""
        return clip_pixels(frames, self.image_size, self.mean, self.std)


def load_long_clip(cfg: LongClipModelConfig, device: torch.device) -> LongClip:
    """The CLIPModel of `cfg.path` in float32 on `device`, text tower stretched to cfg.max_length (a checkpoint that
    has them already loads as it is); trainable parameters as cfg says, the rest frozen."""
    source = resolve_source(cfg.path, "model.path")
    try:
        model = CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=hub_offline())
        tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=hub_offline())
    except OSError as exc:
        raise OSError(f"model.path: cannot load {cfg.path!r} as a CLIPModel with its tokenizer; point it at a local "
                      f"folder (CLIPModel.save_pretrained) or a cached hub id. {exc}") from exc
    positions = model.config.text_config.max_position_embeddings
    if positions > cfg.max_length:
        raise ConfigError(f"model.max_length: got {cfg.max_length}, but {cfg.path} has {positions} positions already")
    extend_clip_context(model.text_model, cfg.max_length)
    tokenizer.model_max_length = cfg.max_length
    set_trainable(model, cfg)
    mean, std = clip_normalisation(source)
    to = dict(device=device, dtype=torch.float32)
    return LongClip(model.to(device), tokenizer, torch.tensor(mean, **to).view(1, 3, 1, 1),
                    torch.tensor(std, **to).view(1, 3, 1, 1))


def set_trainable(model: CLIPModel, cfg: LongClipModelConfig) -> None:
    """The text tower always trains; its projection, the logit scale and the vision side as `cfg` says."""
    model.requires_grad_(False)
    model.text_model.requires_grad_(True)
    model.text_projection.requires_grad_(cfg.train_text_projection)
    model.logit_scale.requires_grad_(cfg.train_logit_scale)
    model.vision_model.requires_grad_(cfg.train_vision)
    model.visual_projection.requires_grad_(cfg.train_vision)


@torch.no_grad()
def retrieval_accuracy(clip: LongClip, pixels: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Top-1 retrieval among the n pairs (pair i: pixels[i], captions[i]; pixels (n, 3, s, s) normalised):
    image_to_text, the fraction of images whose best caption is their own, and text_to_image the other way."""
    was_training = clip.model.training
    clip.model.eval()
    try:
        out = clip.model(pixel_values=pixels.to(clip.mean.device), **clip.tokens(captions))
    finally:
        clip.model.train(was_training)
    target = torch.arange(len(captions), device=out.logits_per_image.device)
    return {"image_to_text": (out.logits_per_image.argmax(1) == target).float().mean().item(),
            "text_to_image": (out.logits_per_text.argmax(1) == target).float().mean().item()}


# ---- data -----------------------------------------------------------------------------------------------

class CaptionedImages(Dataset):
    """The usable (image, caption) pairs of a manifest; item i is (pixels (3, s, s) float32 normalised, caption).
    Images and videos decoded with PyAV (a video gives its first frame)."""

    def __init__(self, manifest: str, image_size: int, mean: torch.Tensor, std: torch.Tensor):
        entries = read_manifest(manifest)
        self.entries = [e for e in entries if entry_problem(e) is None]
        if not self.entries:
            raise ConfigError(f"{manifest}: no usable (path, caption) pairs among its {len(entries)} entries")
        self.image_size, self.mean, self.std = image_size, mean.cpu(), std.cpu()
        self.decoder = PyAVDecoder()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        entry = self.entries[index]
        frame = reference_frame(entry.path, 0.0, self.decoder)  # (h, w, 3) uint8
        return clip_pixels([frame], self.image_size, self.mean, self.std)[0], entry.caption


def step_batch(step: int, size: int, batch_size: int, seed: int) -> list[int]:
    """The pair indices of `step`: epochs are seeded permutations of range(size) cut into whole batches, so a
    resumed run draws exactly the batches the uninterrupted one would."""
    per_epoch = size // batch_size
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


class StepBatches(Sampler):
    """`step_batch` for steps start..steps-1."""

    def __init__(self, start: int, steps: int, size: int, batch_size: int, seed: int):
        self.start, self.steps, self.size, self.batch_size, self.seed = start, steps, size, batch_size, seed

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield step_batch(step, self.size, self.batch_size, self.seed)


def collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([pixels for pixels, _ in items]), [caption for _, caption in items]


def held_out_pairs(manifest: str, clip: LongClip) -> tuple[torch.Tensor, list[str]]:
    """Every pair of an evaluation manifest, decoded: (n, 3, s, s) pixels and n captions."""
    dataset = CaptionedImages(manifest, clip.image_size, clip.mean, clip.std)
    return collate([dataset[i] for i in range(len(dataset))])


# ---- training -------------------------------------------------------------------------------------------

def learning_rate(train: LongClipOptimConfig, step: int) -> float:
    """Linear warmup from 0 over warmup_steps, then cosine decay to 0 at `steps` (step counted from 0)."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(train.steps - train.warmup_steps, 1)
    return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: CLIPModel, train: LongClipOptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases, norms, embeddings and the logit scale
    (CLIP's rule: only matrices decay)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "embedding" not in n]
    ids = {id(p) for p in decay}
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


def save_checkpoint(folder: Path, clip: LongClip, optimizer: torch.optim.Optimizer, step: int) -> Path:
    """`folder` replaced whole: the CLIPModel and tokenizer (save_pretrained), the image normalisation
    (preprocessor_config.json) and train_state.pt (step, optimizer, RNG)."""
    with replacing_folder(folder) as staging:
        clip.model.save_pretrained(staging)
        clip.tokenizer.save_pretrained(staging)
        processor = {"image_mean": clip.mean.flatten().tolist(), "image_std": clip.std.flatten().tolist(),
                     "crop_size": clip.image_size}
        (staging / PROCESSOR_FILE).write_text(json.dumps(processor))
        rng = {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state_all()}
                                                if clip.mean.device.type == "cuda" else {})}
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng}, staging / TRAIN_STATE)
    return folder


def resume_path(cfg: LongClipConfig) -> Optional[Path]:
    """out_dir/checkpoint when it holds a train state; refused under train.resume=false."""
    folder = Path(cfg.train.out_dir) / CHECKPOINT
    if not (folder / TRAIN_STATE).is_file():
        return None
    if not cfg.train.resume:
        raise ConfigError(f"train.resume=false but {folder} already holds a checkpoint; set train.out_dir to a new "
                          "folder to start over, or train.resume=true to continue it")
    return folder


def _restore(folder: Path, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    state = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["cpu"])
    if device.type == "cuda" and "cuda" in state["rng"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"]


def contrastive_step(clip: LongClip, optimizer: torch.optim.Optimizer, pixels: torch.Tensor, captions: list[str],
                     grad_clip: float, bf16: bool) -> dict[str, float]:
    """One update on a batch (pixels (b, 3, s, s) normalised, b captions): CLIP's symmetric InfoNCE; returns the
    loss and the batch's image-to-text top-1 accuracy."""
    device = clip.mean.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = clip.model(pixel_values=pixels.to(device), **clip.tokens(captions), return_loss=True)
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"loss not finite ({out.loss.item()}); stopped before it reached the weights")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in clip.model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    target = torch.arange(len(captions), device=device)
    return {"loss": out.loss.item(), "accuracy": (out.logits_per_image.argmax(1) == target).float().mean().item()}


def finetune_long_clip(cfg: LongClipConfig, show_progress: bool = True,
                       runtime: Runtime | None = None) -> list[dict]:
    """Fine-tune cfg.model.path's stretched text tower on cfg.data.manifest (resuming from out_dir/checkpoint);
    returns the logged records ({"step", "loss", "accuracy", "lr"}, plus eval_image_to_text / eval_text_to_image
    on the held-out pairs)."""
    train = cfg.train
    device = (runtime or Runtime.resolve()).device
    out_dir = Path(train.out_dir)
    checkpoint = resume_path(cfg)
    model_cfg = cfg.model if checkpoint is None else replace(cfg.model, path=str(checkpoint))
    torch.manual_seed(train.seed)
    clip = load_long_clip(model_cfg, device)
    optimizer = build_optimizer(clip.model, train)
    start = _restore(checkpoint, optimizer, device) if checkpoint is not None else 0
    dataset = CaptionedImages(cfg.data.manifest, clip.image_size, clip.mean, clip.std)
    if len(dataset) < cfg.data.batch_size:
        raise ConfigError(f"data.batch_size: got {cfg.data.batch_size}, but {cfg.data.manifest} has only "
                          f"{len(dataset)} usable pairs")
    held_out = held_out_pairs(cfg.data.eval_manifest, clip) if cfg.data.eval_manifest else None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", to_yaml(cfg))
    metrics = out_dir / "metrics.jsonl"
    drop_metrics_after(metrics, start)
    batches = DataLoader(dataset, batch_sampler=StepBatches(start, train.steps, len(dataset), cfg.data.batch_size,
                                                            train.seed),
                         num_workers=cfg.data.num_workers, collate_fn=collate)
    bf16 = train.precision == "bf16" or (train.precision == "auto" and device.type == "cuda")
    clip.model.train()
    history = []
    with tqdm(batches, initial=start, total=train.steps, desc=f"finetune_long_clip[{cfg.name}]",
              disable=not show_progress) as bar:
        if checkpoint is not None:
            bar.write(f"resumed from {checkpoint} at step {start}")
        for step, (pixels, captions) in enumerate(bar, start):
            lr = learning_rate(train, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            record = {"step": step + 1, **contrastive_step(clip, optimizer, pixels, captions, train.grad_clip, bf16),
                      "lr": lr}
            done, last = step + 1, step + 1 == train.steps
            if held_out is not None and (done % train.eval_every == 0 or last):
                record.update({f"eval_{k}": v for k, v in retrieval_accuracy(clip, *held_out).items()})
            history.append(record)
            if done % train.log_every == 0 or last or "eval_image_to_text" in record:
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                with open(metrics, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                bar.write(log_line(record, train.steps))
            if done % train.checkpoint_every == 0 or last:
                bar.write(f"saved {save_checkpoint(out_dir / CHECKPOINT, clip, optimizer, done)} at step {done}")
    return history


def log_line(record: dict, steps: int) -> str:
    line = f"step {record['step']}/{steps} | loss {record['loss']:.4f} | batch top-1 {record['accuracy']:.3f}"
    if "eval_image_to_text" in record:
        line += (f" | held-out top-1 image->text {record['eval_image_to_text']:.3f}, "
                 f"text->image {record['eval_text_to_image']:.3f}")
    return line


def main(argv: list[str] | None = None) -> int:
    """`python tools/finetune_long_clip.py --config NAME --out DIR [a.b=value ...]`; exit status 2 for a refused
    config, 1 when the loss stopped being finite."""
    import argparse

    parser = argparse.ArgumentParser(description="Fine-tune long-prompt MetaCLIP (77 -> 256 positions).")
    parser.add_argument("--config", required=True, help="recipe name (configs/long_clip) or a YAML path")
    parser.add_argument("--out", help="run folder (train.out_dir): metrics, config and checkpoint/")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.manifest=pairs.jsonl")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.out_dir={args.out}"] if args.out else [])
    try:
        cfg = load_long_clip_config(args.config, overrides)
        if args.print_config:
            print(to_yaml(cfg))
            return 0
        started = time.time()
        history = finetune_long_clip(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"finetune_long_clip: error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"finetune_long_clip: error: {exc}", file=sys.stderr)
        return 1
    if not history:
        print(f"nothing to train: the checkpoint already reached train.steps={cfg.train.steps}")
        return 0
    print(f"{log_line(history[-1], cfg.train.steps)}, {time.time() - started:.1f} s; "
          f"checkpoint: {Path(cfg.train.out_dir) / CHECKPOINT}")
    return 0
