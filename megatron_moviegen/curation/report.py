"""The curation report as one PNG: each stage's funnel (clips in, removed by each filter, out), histograms of the
recorded scores with the first stage's thresholds, and a contact sheet of kept and removed clips (the first
stage's verdicts, the clip's thumbnail written by the analysis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from megatron_moviegen.curation.config import CurationConfig, Thresholds
from megatron_moviegen.curation.stages import REMOVALS
from megatron_moviegen.utils.io import atomic_output

WIDTH = 1200
PANEL = (225, 120)  # one histogram (w, h)
THUMB = (128, 72)
SHEET_COLUMNS = 8
HISTOGRAMS = {  # score -> the threshold fields drawn on its histogram
    "sharpness": ("min_sharpness",), "motion": ("min_motion", "max_motion"), "jitter": ("max_jitter",),
    "text": ("max_text",), "border": ("max_border",),
}


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_funnel(draw: ImageDraw.ImageDraw, top: int, name: str, funnel: dict[str, int]) -> int:
    """One stage's funnel as labelled bars from `top`; returns the y below it."""
    draw.text((20, top), f"stage {name!r}: {funnel['videos']} videos ({funnel['videos_rejected']} rejected, "
                         f"{funnel['short_shots']} shots too short)", fill="black", font=_font(15))
    top += 24
    rows = [("clips in", funnel["in"])] + [(f"removed: {r}", funnel[r]) for r in REMOVALS if funnel[r]]
    rows.append(("clips out", funnel["out"]))
    for label, count in rows:
        length = int(600 * count / max(funnel["in"], 1))
        colour = "#4a7" if label.startswith("clips") else "#d54"
        draw.rectangle([220, top + 2, 220 + max(length, 1), top + 15], fill=colour)
        draw.text((20, top), label, fill="black", font=_font(13))
        draw.text((230 + length, top), str(count), fill="black", font=_font(13))
        top += 18
    return top + 10


def draw_histogram(draw: ImageDraw.ImageDraw, left: int, top: int, score: str, values: np.ndarray,
                   thresholds: Thresholds) -> None:
    """A 12-bin histogram of `values` in a PANEL-sized box, thresholds as red lines."""
    w, h = PANEL
    draw.text((left, top), score, fill="black", font=_font(13))
    limits = [getattr(thresholds, f) for f in HISTOGRAMS[score]]
    low, high = min([*values, *limits]), max([*values, *limits])
    high = high if high > low else low + 1.0
    counts, edges = np.histogram(values, bins=12, range=(low, high))
    base, plot_h = top + h - 18, h - 40
    for i, count in enumerate(counts):
        x0 = left + int(i * w / 12)
        draw.rectangle([x0, base - int(plot_h * count / max(counts.max(), 1)), x0 + int(w / 12) - 2, base],
                       fill="#58a")
    for limit in limits:
        x = left + int(w * (limit - low) / (high - low))
        draw.line([x, top + 18, x, base], fill="red", width=2)
    draw.text((left, base + 2), f"{low:.3g}", fill="black", font=_font(11))
    draw.text((left + w - 40, base + 2), f"{high:.3g}", fill="black", font=_font(11))


def draw_sheet(image: Image.Image, draw: ImageDraw.ImageDraw, top: int, title: str, clips: list[dict],
               labels: list[str], folder: Path) -> int:
    """Thumbnails with a label under each, SHEET_COLUMNS a row; returns the y below the sheet."""
    draw.text((20, top), title, fill="black", font=_font(15))
    top += 22
    for i, (clip, label) in enumerate(zip(clips, labels)):
        x, y = 20 + (i % SHEET_COLUMNS) * (THUMB[0] + 16), top + (i // SHEET_COLUMNS) * (THUMB[1] + 34)
        image.paste(Image.open(folder / clip["thumbnail"]).convert("RGB").resize(THUMB), (x, y))
        draw.text((x, y + THUMB[1] + 2), clip["clip"].split("-")[0] + f".{clip['clip'].rsplit('.', 1)[1]}",
                  fill="black", font=_font(11))
        draw.text((x, y + THUMB[1] + 16), label, fill="black", font=_font(11))
    rows = (len(clips) + SHEET_COLUMNS - 1) // SHEET_COLUMNS
    return top + rows * (THUMB[1] + 34) + 10


def report_height(clips: list[dict], funnels: dict, stage: str) -> int:
    """Pixels the report needs: title, funnels, histograms, two contact sheets."""
    funnel_rows = sum(24 + 18 * (2 + sum(1 for r in REMOVALS if f[r])) + 10 for f in funnels.values())
    kept = sum(c["removed_by"][stage] is None for c in clips)
    sheet_rows = sum((n + SHEET_COLUMNS - 1) // SHEET_COLUMNS for n in (kept, len(clips) - kept))
    return 55 + funnel_rows + PANEL[1] + 30 + 2 * 32 + sheet_rows * (THUMB[1] + 34) + 20


def write_report(path: Path, clips: list[dict], funnels: dict[str, dict[str, int]], config: CurationConfig) -> None:
    """The report PNG for merged `clips` (each with `removed_by` per stage) and the stages' funnels."""
    folder = path.parent
    stage = next(iter(funnels))
    image = Image.new("RGB", (WIDTH, report_height(clips, funnels, stage)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((20, 15), "moviegen-curate report", fill="black", font=_font(20))
    top = 55
    for name, funnel in funnels.items():
        top = draw_funnel(draw, top, name, funnel)
    thresholds = config.stage_thresholds()[stage]
    for i, score in enumerate(HISTOGRAMS):
        values = np.array([c["scores"][score] for c in clips], dtype=float)
        draw_histogram(draw, 20 + i * (PANEL[0] + 10), top, score, values if len(values) else np.zeros(1),
                       thresholds)
    top += PANEL[1] + 30
    kept = [c for c in clips if c["removed_by"][stage] is None]
    removed = [c for c in clips if c["removed_by"][stage] is not None]
    top = draw_sheet(image, draw, top, f"kept ({stage!r})", kept, [c["camera_motion"] for c in kept], folder)
    draw_sheet(image, draw, top, f"removed ({stage!r})", removed, [c["removed_by"][stage] for c in removed], folder)
    with atomic_output(path) as tmp:
        image.save(tmp, format="PNG")
