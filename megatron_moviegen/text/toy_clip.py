"""A tiny CLIP and procedural (image, caption) pairs, to show long-prompt fine-tuning (text/long_clip.py) on CPU:
32 px images of one coloured shape in one quadrant, captioned "a red circle at the top left" after a filler that is
the same for every image, so only the words after it decide which image a caption belongs to. Short captions keep
those words inside the first 77 positions (what a pretrained CLIP has seen); long ones put them past position 77.

    tokenizer = byte_clip_tokenizer()
    model = tiny_clip(len(tokenizer), positions=77)
    pairs = draw_pairs(COMBINATIONS, 64, "long", torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from megatron_moviegen.models.vision_tower import CLIP_MEAN, CLIP_STD, PROCESSOR_FILE
from megatron_moviegen.utils.io import replacing_folder

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 240), "yellow": (235, 220, 40),
           "magenta": (220, 50, 220), "cyan": (40, 220, 230)}
SHAPES = ("circle", "square", "triangle", "cross")
PLACES = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
COMBINATIONS = [(c, s) for c in COLOURS for s in SHAPES]
# One (colour, shape) per colour never seen in training, every shape held out for some colour.
HELD_OUT = [(c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLOURS)]
SEEN = [combo for combo in COMBINATIONS if combo not in HELD_OUT]
FILLER = ("this picture was taken with an old camera on a quiet grey day in a small room and it shows one simple "
          "thing drawn on a dark ground near one of the four corners of the frame so look closely at it now please "
          "and then say what you see there in the picture").split()
SIZE = 32


def byte_clip_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer with one token per byte (no merges): a caption's tokens are its non-space characters plus
    start and end."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip(vocab_size: int, positions: int = 77, width: int = 64, seed: int = 0) -> CLIPModel:
    """A randomly initialised (seeded) 2-layer CLIPModel: text tower of `positions` positions, vision tower on
    32 px images in 8 px patches (16 patches + class token), both `width` wide, projection 32."""
    text = dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=positions, bos_token_id=0, eos_token_id=1,
                pad_token_id=1)
    vision = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4,
                  image_size=SIZE, patch_size=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))


def save_clip(folder: str | Path, model: CLIPModel, tokenizer: CLIPTokenizer) -> Path:
    """`folder` written whole: the model, tokenizer and CLIP's image normalisation (preprocessor_config.json)."""
    with replacing_folder(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / PROCESSOR_FILE).write_text(json.dumps({"image_mean": CLIP_MEAN, "image_std": CLIP_STD,
                                                          "crop_size": SIZE}))
    return Path(folder)


def draw(colours: list[str], shapes: list[str], places: list[str], generator: torch.Generator) -> torch.Tensor:
    """(n, 32, 32, 3) uint8 images, image i: a noisy dark ground and shapes[i] (radius 5-7.5 px) in colours[i] at a
    random spot of the quadrant places[i]."""
    n = len(colours)
    unit = torch.rand(3, n, 1, 1, generator=generator)
    radius, spot_y, spot_x = 5.0 + 2.5 * unit[0], unit[1], unit[2]  # (n, 1, 1) each
    quadrant = torch.tensor([PLACES[p] for p in places], dtype=torch.float32).view(n, 2, 1, 1)
    cy = quadrant[:, 0] * SIZE / 2 + radius + spot_y * (SIZE / 2 - 2 * radius)  # (n, 1, 1) px
    cx = quadrant[:, 1] * SIZE / 2 + radius + spot_x * (SIZE / 2 - 2 * radius)
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    y, x = grid.view(1, SIZE, 1) - cy, grid.view(1, 1, SIZE) - cx  # (n, 32, 1), (n, 1, 32)
    masks = {"circle": y**2 + x**2 <= radius**2,
             "square": (y.abs() <= radius * 0.8) & (x.abs() <= radius * 0.8),
             "triangle": (y <= radius * 0.8) & (y >= 2 * x.abs() - radius),
             "cross": ((y.abs() <= radius / 3) & (x.abs() <= radius)) | ((x.abs() <= radius / 3) & (y.abs() <= radius))}
    inside = torch.stack([masks[shape][i] for i, shape in enumerate(shapes)])  # (n, 32, 32)
    colour = torch.tensor([COLOURS[c] for c in colours], dtype=torch.float32).view(n, 1, 1, 3)
    ground = 30 + 20 * torch.rand(n, SIZE, SIZE, 3, generator=generator)
    return torch.where(inside[..., None], colour, ground).round().to(torch.uint8)


def describe(colour: str, shape: str, place: str) -> str:
    return f"a {colour} {shape} at the {place}"


def byte_tokens(text: str) -> int:
    """Tokens of `text` under `byte_clip_tokenizer`, start and end not counted: one per non-space character."""
    return len(text.replace(" ", ""))


def caption(description: str, kind: Literal["short", "long"], generator: torch.Generator) -> str:
    """`description` after a random number of filler words (`byte_clip_tokenizer` tokens): "short" keeps the whole
    caption within 77 tokens; "long" puts the description's first token past position 77 (at least 78 filler
    tokens after the start token)."""
    room = 77 - 2 - byte_tokens(description)  # filler tokens that fit before it in a 77-token caption
    counts = [byte_tokens(" ".join(FILLER[:w])) for w in range(len(FILLER) + 1)]
    fits = [w for w, n in enumerate(counts) if (n <= room if kind == "short" else n >= 78)]
    words = fits[int(torch.randint(len(fits), (), generator=generator))]
    return " ".join(FILLER[:words] + [description])


def draw_pairs(combinations: list[tuple[str, str]], n: int, kind: Literal["short", "long"], generator: torch.Generator
               ) -> tuple[torch.Tensor, list[str]]:
    """n pairs: (n, 32, 32, 3) uint8 images and their captions, random (colour, shape) of `combinations` at random
    places."""
    picks = torch.randint(len(combinations), (n,), generator=generator).tolist()
    places = [list(PLACES)[i] for i in torch.randint(len(PLACES), (n,), generator=generator).tolist()]
    return _pairs([combinations[i] for i in picks], places, kind, generator)


def retrieval_set(combinations: list[tuple[str, str]], kind: Literal["short", "long"], generator: torch.Generator
                  ) -> tuple[torch.Tensor, list[str]]:
    """One new image per (colour, shape, place) of `combinations`: pairs whose captions all differ, to retrieve
    among."""
    chosen = [(combo, place) for combo in combinations for place in PLACES]
    return _pairs([combo for combo, _ in chosen], [place for _, place in chosen], kind, generator)


def _pairs(combinations: list[tuple[str, str]], places: list[str], kind: Literal["short", "long"],
           generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    images = draw([c for c, _ in combinations], [s for _, s in combinations], places, generator)
    captions = [caption(describe(c, s, p), kind, generator) for (c, s), p in zip(combinations, places)]
    return images, captions

def pretrain(steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, show_progress: bool = True
             ) -> tuple[CLIPModel, CLIPTokenizer]:
    """The stand-in for a pretrained CLIP: `tiny_clip` at 77 positions trained whole (both towers) for `steps` on
    fresh short-caption pairs of the SEEN combinations (AdamW, constant `lr`)."""
    from tqdm import tqdm

    from megatron_moviegen.text.long_clip import LongClip, clip_pixels, contrastive_step

    tokenizer = byte_clip_tokenizer()
    model = tiny_clip(len(tokenizer), 77, seed=seed).train()
    clip = LongClip(model, tokenizer, torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    with tqdm(range(steps), desc="pretrain tiny CLIP (77 positions, short captions)", disable=not show_progress) as bar:
        for _ in bar:
            images, captions = draw_pairs(SEEN, batch_size, "short", generator)
            pixels = clip_pixels(images, SIZE, clip.mean, clip.std)
            bar.set_postfix(contrastive_step(clip, optimizer, pixels, captions, grad_clip=1.0, bf16=False))
    return model.eval(), tokenizer
