"""One checkpoint-folder protocol for every trainer: the DiT's (checkpoints/distributed.py) and the autoencoders'
(training/tae_checkpoints.py).

    <checkpoint_dir>/
        latest              "iter_0000200" (DiT) or "step_000200" (autoencoders): rewritten atomically, last
        iter_0000200/       one step, published whole; with the run's config beside it:
            config.yaml     `read_config(folder, MovieGenConfig)` (or the autoencoder's config class)
        iter_0000300.tmp/   a step being written (its `partial` folder); a kill leaves it, the next save removes it

A trainer names its steps with its `StepFolders` (`DIT_STEPS`, `AUTOENCODER_STEPS`: the names runs have always
had, so old runs resume). A save writes everything into `partial(final)`, with `write_config`, then `publish` swaps
it in as the step folder (utils/io.py's folder swap: a re-saved step is replaced whole) and points `latest` at it;
`prune` removes older steps beyond the newest `keep_last` (each renamed to `.<name>.deleting` first, so a kill
mid-delete leaves no half step that looks like a checkpoint); `previous_good` names the step a damaged one falls
back to.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from torch.distributed.checkpoint.api import CheckpointException

from megatron_moviegen.config.schema import load_recipe, to_yaml
from megatron_moviegen.utils.io import (DamagedFileError, atomic_write_text, full_disk_message, is_full_disk,
                                        read_file_as, start_staging, swap_in_folder)

LATEST = "latest"
CONFIG_FILE = "config.yaml"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the file or tensor."""


@dataclass(frozen=True)
class StepFolders:
    """How one trainer names its step folders: `<prefix>_<step, digits wide>`, written first into `partial`."""

    prefix: str
    digits: int
    partial_pattern: str  # the partial folder's name, "{}" the step folder's

    def name(self, step: int) -> str:
        return f"{self.prefix}_{step:0{self.digits}d}"

    def step_of(self, folder: Path) -> int | None:
        """The step of a step folder, None for any other entry (a partial, a `.deleting` folder, `latest`)."""
        match = re.fullmatch(rf"{self.prefix}_(\d+)", folder.name)
        return int(match.group(1)) if match else None

    def folders(self, checkpoint_dir: Path) -> list[Path]:
        """The step folders of `checkpoint_dir` (complete or not), oldest first; none if it does not exist."""
        if not checkpoint_dir.is_dir():
            return []
        return sorted((f for f in checkpoint_dir.iterdir() if f.is_dir() and self.step_of(f) is not None),
                      key=self.step_of)

    def partial(self, final: Path) -> Path:
        """Where step folder `final` is written before `publish` (beside it: the swap is a rename)."""
        return final.with_name(self.partial_pattern.format(final.name))

    def start_partial(self, final: Path) -> Path:
        """An empty `partial(final)`; the partial folders that killed saves left beside it removed, and a publish of
        `final` killed between its renames finished (utils/io.py `start_staging`)."""
        for leftover in final.parent.glob(self.partial_pattern.format(f"{self.prefix}_*")):
            shutil.rmtree(leftover)
        return start_staging(final, staging=self.partial(final))


DIT_STEPS = StepFolders("iter", 7, "{}.tmp")
AUTOENCODER_STEPS = StepFolders("step", 6, ".{}.tmp")
_LATEST_PATTERN = "|".join(rf"{s.prefix}_\d{{{s.digits}}}" for s in (DIT_STEPS, AUTOENCODER_STEPS))


def latest_name(checkpoint_dir: str | Path) -> str | None:
    """The step folder name `checkpoint_dir/latest` holds (DiT `iter_X`, autoencoder `step_X`), or None without
    one; a pointer that holds anything else (empty, cut, garbage) is a DamagedFileError naming it."""
    pointer = Path(checkpoint_dir) / LATEST
    if not pointer.is_file():
        return None
    name = read_file_as(pointer, "step folder name (iter_0000200, step_000200)", str.strip)
    if not re.fullmatch(_LATEST_PATTERN, name):
        raise DamagedFileError(f"{pointer}: got {name[:40]!r}, expected a step folder name such as iter_0000200 "
                               "(or a TAE's step_000200); the pointer is damaged: write the name of a complete step "
                               "folder into it")
    return name


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The step folder `latest` names, or None without a `latest`; CheckpointError if that folder is gone."""
    name = latest_name(checkpoint_dir)
    if name is None:
        return None
    path = Path(checkpoint_dir) / name
    if not path.is_dir():
        raise CheckpointError(f"{Path(checkpoint_dir) / LATEST} points to {path}, which does not exist")
    return path


def write_config(partial: Path, cfg) -> None:
    """The run's config (a config dataclass) as `config.yaml` in the step folder being written, atomically."""
    atomic_write_text(partial / CONFIG_FILE, to_yaml(cfg))


def read_config(step_folder: str | Path, cls: type):
    """The config a step was saved with, as `cls` (validated as a recipe is)."""
    return load_recipe(cls, Path(step_folder) / CONFIG_FILE, Path(step_folder))


def publish(checkpoint_dir: Path, partial: Path, final: Path) -> None:
    """Make the complete `partial` the step folder `final` (a step saved again is replaced whole), then point
    `latest` at it. Killed at any point, `latest` names a complete step. One process calls it."""
    swap_in_folder(final, staging=partial)
    atomic_write_text(checkpoint_dir / LATEST, final.name)


@contextlib.contextmanager
def full_disk_named(checkpoint_dir: Path, partial_step: Path, what: str) -> Iterator[None]:
    """Writes of a step into `partial_step` (a temporary folder in `checkpoint_dir`) that find the disk or quota
    full: the partial folder is removed (its space given back) and one CheckpointError names the folder, the free
    space and the last complete step, which stays as it was. Other errors pass unchanged."""
    try:
        yield
    except (Exception, CheckpointException) as exc:  # OSError, torch's RuntimeError, a background save's failure
        if not is_full_disk(exc):
            raise
        shutil.rmtree(partial_step, ignore_errors=True)
        raise CheckpointError(
            f"{full_disk_message(checkpoint_dir, what, exc)}; nothing of this step was kept and the last complete "
            f"step ({latest_name(checkpoint_dir) or 'none yet'}) is untouched: free space (or set train.keep_last) "
            "and resume") from exc


def prune(checkpoint_dir: Path, steps: StepFolders, newest: int, keep_last: int | None,
          protected: frozenset[Path] = frozenset()) -> list[Path]:
    """Delete the step folders older than step `newest` beyond the newest `keep_last` (`newest` counted; None or
    0 keeps every step), except the one `latest` names and `protected` ones (resolved paths); returns those
    deleted. Later steps (left by a run pointed back at an earlier one) stay until this run saves over them."""
    if not keep_last:
        return []
    keep = latest_name(checkpoint_dir)
    older = [f for f in steps.folders(checkpoint_dir) if steps.step_of(f) < newest]
    doomed = [f for f in older[:max(len(older) - (keep_last - 1), 0)]
              if f.name != keep and f.resolve() not in protected]
    for folder in doomed:
        deleting = folder.with_name(f".{folder.name}.deleting")
        folder.rename(deleting)
        shutil.rmtree(deleting)
    for leftover in checkpoint_dir.glob(f".{steps.prefix}_*.deleting"):  # from a run killed mid-delete
        shutil.rmtree(leftover, ignore_errors=True)
    return doomed


def previous_good(step_folder: Path, steps: StepFolders, problem: Callable[[Path], str | None]) -> Path | None:
    """The newest step folder beside `step_folder`, saved before it, for which `problem` (why a folder is not a
    complete checkpoint, or None) finds nothing."""
    step = steps.step_of(step_folder)
    if step is None:
        return None
    earlier = [f for f in steps.folders(step_folder.parent) if steps.step_of(f) < step]
    return next((f for f in reversed(earlier) if problem(f) is None), None)
