"""`torchrun -m megatron_moviegen.train` on 2 ranks: the job speaks once, on one rank, in lines a user reads."""

import os
import subprocess
import sys

from megatron_moviegen.checkpoints.distributed import read_saved_config
from megatron_moviegen.config import to_yaml
from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.recipes import load_config


def test_two_rank_quickstart_prints_each_line_once_and_no_parameter_lists(tiny_shards, tmp_path):
    overrides = [f"data.shards={tiny_shards}", f"train.checkpoint_dir={tmp_path}", "train.steps=4",
                 "train.lr_warmup_steps=1", "train.save_every=4", "train.log_every=2", "train.progress_bar=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "megatron_moviegen.train", "--config", "quickstart", *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    lines = output.splitlines()
    assert not any("Params for bucket" in line or line.startswith("\t") for line in lines), output
    for expected in ("# resolved config (2 ranks)", "step 2/4 |", "step 4/4 |", "finished at step 4"):
        assert sum(line.startswith(expected) for line in lines) == 1, (expected, output)
    saved = read_saved_config(tmp_path)["model"]["trained_fps"]
    assert saved == LatentLoader(tiny_shards, 1, 0.0, 0).prompt_fps() and saved  # the shards' FPS-n values
    config_lines = len(to_yaml(load_config("quickstart", overrides)).splitlines())
    assert len(lines) <= config_lines + 8, f"{len(lines)} lines for a {config_lines}-line config:\n{output}"


def test_a_nonfinite_loss_ends_the_job_with_one_line_and_exit_1(tiny_shards, tmp_path):
    overrides = [f"data.shards={tiny_shards}", f"train.checkpoint_dir={tmp_path}", "train.steps=4",
                 "train.global_batch_size=2", "train.save_every=1", "train.lr=1e30", "train.clip_grad=0.0",
                 "train.progress_bar=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "megatron_moviegen.train", "--config", "tiny", *overrides],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train: error:")]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("train: error: the weights after step 1 give loss nan"), proc.stderr
    assert not list(tmp_path.glob("iter_*")) and not (tmp_path / "latest").exists()


def test_a_world_size_that_no_layout_fits_is_one_line_before_any_process_group(tmp_path):
    env = dict(os.environ, RANK="2", WORLD_SIZE="3", LOCAL_RANK="2", PYTHONWARNINGS="ignore")  # as torchrun sets them
    proc = subprocess.run([sys.executable, "-m", "megatron_moviegen.train", "--config", "tiny",
                           "parallel.tensor_model_parallel_size=2", f"train.checkpoint_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("config error: parallel: world size 3 is not divisible by tensor(2) x context(1) "
                                   "x pipeline(1) = 2"), proc.stderr


def test_an_empty_shard_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "shards").mkdir()
    proc = subprocess.run([sys.executable, "-m", "megatron_moviegen.train", "--config", "tiny",
                           f"data.shards={tmp_path / 'shards'}", f"train.checkpoint_dir={tmp_path / 'ckpt'}"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"train: error: {tmp_path / 'shards'}: no .nv-meta/.info.json; pre-encoding has "
                                   "not finished here"), proc.stderr
    assert not (tmp_path / "ckpt" / "latest").exists()
