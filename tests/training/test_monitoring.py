"""training/monitoring.py: TensorBoard on by default, W&B's run id kept across restarts, the MFU's peak."""

import sys
import types

import pytest

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.training.monitoring import Monitor, check_monitoring, device_peak_tflops


def test_known_gpus_get_their_datasheet_peak_and_others_none():
    assert device_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("NVIDIA H200") == 989.4
    assert device_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert device_peak_tflops("NVIDIA A10G") == 125.0 and device_peak_tflops("NVIDIA L4") == 121.0
    assert device_peak_tflops("NVIDIA L40S") == 362.0
    assert device_peak_tflops("cpu") is None and device_peak_tflops("NVIDIA GeForce RTX 3090") is None


def test_tensorboard_writes_event_files_under_the_run_folder_by_default(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = Monitor(tmp_path, "run", tensorboard=True, tensorboard_dir=None, wandb_project=None, config={})
    monitor.scalars("train", {"loss": 0.5, "bucket": "1:1 64x64", "step": 3, "mfu": None}, step=3)
    monitor.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train/loss"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(3, 0.5)]


def test_a_missing_package_is_named_before_anything_is_built(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"train.tensorboard: true needs the tensorboard package.*tensorboard=false"):
        check_monitoring(True, None)
    with pytest.raises(ConfigError, match=r"train.wandb_project: 'p' needs the wandb package"):
        check_monitoring(False, "p")
    check_monitoring(False, None)


def test_a_restarted_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kwargs: calls.append(kwargs) or types.SimpleNamespace(
        log=lambda *a, **k: None, finish=lambda: None))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for _ in range(2):  # the first job, then its requeue
        Monitor(tmp_path, "run", tensorboard=False, tensorboard_dir=None, wandb_project="p", config={}).close()
    assert calls[0]["id"] == calls[1]["id"] == (tmp_path / "wandb_run_id").read_text().strip()
    assert calls[0]["resume"] == "allow" and calls[0]["project"] == "p"
    other = tmp_path / "other"
    Monitor(other, "run", tensorboard=False, tensorboard_dir=None, wandb_project="p", config={}).close()
    assert calls[2]["id"] != calls[0]["id"]  # another run folder, another W&B run
