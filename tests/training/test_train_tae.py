import json

import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.training import train_tae as train_tae_module
from megatron_moviegen.training.train_tae import load_tae_config, resolve_data_parallel, train_tae
from tests.harness import run_distributed

FAST = ["data.size=32", "data.video_frames=8", "data.max_decoded_frames=8", "data.image_every=0",
        "train.log_every=1", "train.lr=0.003"]


def _train_rank(rank, world_size, overrides):
    history = train_tae(load_tae_config("tae_tiny", overrides), show_progress=False)
    weights = torch.cat([p.detach().flatten() for p in TAE.from_pretrained(
        load_tae_config("tae_tiny", overrides).train.out_dir + "/checkpoint").parameters()])
    return [h["loss"] for h in history], float(weights.sum())


def test_two_process_ddp_training_reduces_the_loss(tmp_path):
    results = run_distributed(_train_rank, 2, (FAST + ["train.steps=6", f"train.out_dir={tmp_path}",
                                                       "train.data_parallel=ddp"],))
    (losses0, _), (losses1, _) = results
    assert len(losses0) == len(losses1) == 6
    assert sum(losses0[-2:]) < 0.9 * sum(losses0[:2])
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6] and all(r["psnr"] > 5 for r in lines)


def test_training_resumes_from_its_checkpoint(tmp_path):
    torch.set_num_threads(2)
    base = FAST + [f"train.out_dir={tmp_path}", "train.checkpoint_every=2", "data.image_every=2",
                   "data.image_batch_size=1"]
    first = train_tae(load_tae_config("tae_tiny", base + ["train.steps=2"]), show_progress=False)
    resumed = train_tae(load_tae_config("tae_tiny", base + ["train.steps=3"]), show_progress=False)
    uninterrupted = train_tae(load_tae_config("tae_tiny", base + ["train.steps=3", f"train.out_dir={tmp_path}/u"]),
                              show_progress=False)
    assert [r["step"] for r in first] == [1, 2] and [r["step"] for r in resumed] == [3]
    # Weights, AdamW state and the step's randomness (posterior noise, crops) all resume.
    assert [r["loss"] for r in first + resumed] == pytest.approx([r["loss"] for r in uninterrupted], rel=1e-6)
    assert [r["frames"] for r in first + resumed] == [1, 8, 1]  # image:video alternation follows the step


def test_data_parallel_falls_back_to_ddp_without_deepspeed(monkeypatch):
    monkeypatch.setattr(train_tae_module, "import_deepspeed", lambda: None)
    assert resolve_data_parallel("auto") == "ddp" and resolve_data_parallel("ddp") == "ddp"
    with pytest.raises(ConfigError, match="train.data_parallel: got 'deepspeed' but deepspeed is not installed"):
        resolve_data_parallel("deepspeed")


def test_recipe_without_videos_is_rejected():
    with pytest.raises(ConfigError, match="data.videos: at least one video path is required"):
        load_tae_config("tae_paper")
