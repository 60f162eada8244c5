"""Where training numbers go besides the console and metrics.jsonl: TensorBoard (on by default, event files under
the run's folder) and Weights & Biases (when a project is named), for the DiT and the autoencoder trainers alike;
and the peak the MFU is measured against.

    check_monitoring(tensorboard=True, wandb_project=None)       # at config time: a missing package is named
    monitor = Monitor(run_folder, "tiny", tensorboard=True, tensorboard_dir=None, wandb_project=None, config={...})
    monitor.scalars("train", {"loss": 0.9, "lr": 1e-4}, step=10)
    monitor.close()

A W&B run's id is kept in `<run folder>/wandb_run_id`, written when the run first starts: a requeued or resumed job
continues the same W&B run (`resume="allow"`) instead of starting another.
"""

from __future__ import annotations

import importlib.util
import re
import secrets
from pathlib import Path
from typing import Optional

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.utils.io import atomic_write_text

WANDB_ID_FILE = "wandb_run_id"
TENSORBOARD_SUBDIR = "tensorboard"

# Dense bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; first match of the device name wins.
PEAK_BF16_TFLOPS = (
    (r"GH200", 989.4),
    (r"H200", 989.4),
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100|H800", 989.4),  # SXM (the name says "HBM3")
    (r"B200", 2250.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"A10\b|A10G", 125.0),
    (r"L4\b", 121.0),
)


def device_peak_tflops(device_name: str) -> Optional[float]:
    """The dense bf16 peak of a GPU named `device_name` (torch.cuda.get_device_name()), or None when unknown."""
    return next((peak for pattern, peak in PEAK_BF16_TFLOPS if re.search(pattern, device_name)), None)


def check_monitoring(tensorboard: bool, wandb_project: Optional[str], where: str = "train") -> None:
    """Refuse, before anything is built, a logger whose package is not installed."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"{where}.tensorboard: true needs the tensorboard package (pip install tensorboard), or set "
                          f"{where}.tensorboard=false")
    if wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"{where}.wandb_project: {wandb_project!r} needs the wandb package (pip install wandb), "
                          f"or unset {where}.wandb_project")


def wandb_run_id(run_folder: Path) -> str:
    """The W&B run id of the run writing `run_folder`: read from its `wandb_run_id` file, or made and written there."""
    path = run_folder / WANDB_ID_FILE
    if path.is_file():
        saved = path.read_text().strip()
        if saved:
            return saved
    run_id = secrets.token_hex(8)
    atomic_write_text(path, run_id + "\n")
    return run_id


class Monitor:
    """TensorBoard and W&B for one run; build it on the one rank that logs."""

    def __init__(self, run_folder: str | Path, name: str, tensorboard: bool, tensorboard_dir: Optional[str],
                 wandb_project: Optional[str], config: dict):
        run_folder = Path(run_folder)
        run_folder.mkdir(parents=True, exist_ok=True)
        self.tensorboard = self.wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(tensorboard_dir or run_folder / TENSORBOARD_SUBDIR))
        if wandb_project:
            import wandb

            self.wandb = wandb.init(project=wandb_project, name=name, id=wandb_run_id(run_folder), resume="allow",
                                    config=config)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        """Every int or float of `values` as `<prefix>/<key>` at `step` (other values, e.g. a bucket name, skipped)."""
        numbers = {f"{prefix}/{key}": float(value) for key, value in values.items()
                   if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
        if self.tensorboard is not None:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None and numbers:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
