"""Autoencoder training checkpoints (the TAE's, the audio autoencoder's): one folder per kept step, each written
whole or not at all, by checkpoints/protocol.py (`AUTOENCODER_STEPS`).

    <out_dir>/
        checkpoints/
            latest                  "step_000300", rewritten atomically once that folder is complete
            step_000200/            config.json + model.safetensors (save_pretrained), train_state.pt and the
                                    run's config.yaml (protocol.read_config)
            step_000300/
        checkpoint -> checkpoints/step_000300       the latest autoencoder, for load_tae and pre-encoding

A save writes `checkpoints/.step_000300.tmp/` and publishes it (renamed in, then `latest`), so weights and train
state are never a step apart; then it swaps the `checkpoint` link (one rename) and prunes to the newest
`keep_last` steps. A kill at any point leaves `latest` and `checkpoint` on a complete step; the next save removes
the leftover `.tmp`. A load refuses, naming the file and the previous complete step, a folder whose files are
missing or shorter than their headers say.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from megatron_moviegen.checkpoints.protocol import (AUTOENCODER_STEPS, LATEST, CheckpointError, full_disk_named,
                                                    latest_name, previous_good, prune, publish, write_config)
from megatron_moviegen.models.tae import CONFIG_NAME, TAE, WEIGHTS_NAME

CHECKPOINTS = "checkpoints"
LINK = "checkpoint"
TRAIN_STATE = "train_state.pt"
FILES = (CONFIG_NAME, WEIGHTS_NAME, TRAIN_STATE)


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        header_end = 8 + int.from_bytes(head, "little") if len(head) == 8 else None
        if header_end is None or header_end > size:
            return f"{path} has {size} bytes, shorter than its header (truncated copy or save)"
        try:
            header = json.loads(fh.read(header_end - 8))
        except ValueError as exc:
            return f"{path} has an unreadable header ({exc})"
    needed = header_end + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < needed:
        return f"{path} has {size} bytes, its header needs {needed} (truncated copy or save)"
    return None


def storage_problem(folder: Path) -> str | None:
    """Why `folder` cannot be a complete checkpoint (a file missing or cut short), or None. Reads headers only."""
    for name in FILES:
        if not (folder / name).is_file():
            return f"{folder / name} is missing"
    problem = _safetensors_problem(folder / WEIGHTS_NAME)
    if problem is not None:
        return problem
    if not zipfile.is_zipfile(folder / TRAIN_STATE):  # torch.save's zip ends with its directory: a cut file has none
        return f"{folder / TRAIN_STATE} is not a whole torch.save archive (truncated copy or save)"
    return None


def _refusal(problem: str, folder: Path) -> CheckpointError:
    previous = previous_good(folder, AUTOENCODER_STEPS, storage_problem)
    fallback = (f"the previous complete step is {previous} (write '{previous.name}' into "
                f"{folder.parent / LATEST} to resume from it)" if previous is not None
                else "there is no earlier complete step beside it")
    return CheckpointError(f"{problem}; {fallback}")


def resume_folder(out_dir: str | Path) -> Path | None:
    """The checkpoint a run in `out_dir` continues from: the step `checkpoints/latest` names, else the newest step
    folder (a kill between the rename and `latest`), else a real `checkpoint/` folder holding any of the files (the
    single-folder layout written before kept steps); None when `out_dir` holds no checkpoint."""
    out_dir = Path(out_dir)
    latest = latest_name(out_dir / CHECKPOINTS)
    if latest is not None:
        return out_dir / CHECKPOINTS / latest
    folders = AUTOENCODER_STEPS.folders(out_dir / CHECKPOINTS)
    if folders:
        return folders[-1]
    single = out_dir / LINK
    if single.is_dir() and not single.is_symlink() and any((single / name).exists() for name in FILES):
        return single
    return None


def _read(path: Path, reader, folder: Path):
    try:
        return reader(path)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
        raise _refusal(f"{path} cannot be read ({type(exc).__name__}: {exc})", folder) from None


def load_checkpoint(folder: Path, model: TAE, discriminator: nn.Module) -> dict:
    """Load a checkpoint folder's weights into `model` and `discriminator`; returns its train state (`step`,
    `discriminator`, `optimizers`). Raises CheckpointError naming the file and the previous complete step."""
    problem = storage_problem(folder) if folder.is_dir() else f"checkpoint folder {folder} does not exist"
    if problem is not None:
        raise _refusal(problem, folder)
    model.load_state_dict(_read(folder / WEIGHTS_NAME, lambda p: load_file(str(p)), folder))
    state = _read(folder / TRAIN_STATE, lambda p: torch.load(p, map_location="cpu", weights_only=False), folder)
    discriminator.load_state_dict(state["discriminator"])
    return state


def _point_link(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target` with one rename; a real folder there (single-folder layout) goes first."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)


def save_checkpoint(out_dir: str | Path, step: int, model: TAE, train_state: dict, keep_last: int | None,
                    config) -> Path:
    """Write `checkpoints/step_<step>/` whole (the autoencoder, `train_state` and `config`, the run's config
    dataclass), then point `latest` and `checkpoint` at it and prune older steps (`keep_last`: None or 0 keeps
    every step); returns the folder. One process (rank 0) calls it."""
    out_dir = Path(out_dir)
    checkpoints = out_dir / CHECKPOINTS
    final = checkpoints / AUTOENCODER_STEPS.name(step)
    tmp = AUTOENCODER_STEPS.start_partial(final)
    with full_disk_named(checkpoints, tmp, f"saving TAE step {step}"):
        model.save_pretrained(tmp)
        torch.save(train_state, tmp / TRAIN_STATE)
        write_config(tmp, config)
    publish(checkpoints, tmp, final)
    _point_link(out_dir / LINK, Path(CHECKPOINTS) / final.name)
    prune(checkpoints, AUTOENCODER_STEPS, step, keep_last)
    return final
