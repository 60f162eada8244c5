"""The SLURM scripts parse, and their dry runs resolve the layout without launching anything."""

import os
import subprocess


def _run(*args, env=None):
    return subprocess.run(["bash", *args], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_slurm_scripts_are_valid_bash():
    for script in ("slurm/pretrain_t2v_30b.sh", "slurm/preencode.sh"):
        assert _run("-n", script).returncode == 0


def test_pretrain_dry_run_prints_the_30b_layout_and_memory_estimate():
    result = _run("slurm/pretrain_t2v_30b.sh", "--dry-run", env={"NODES": "64"})
    assert result.returncode == 0, result.stderr
    assert "TP 4 (SP on) x CP 2 x PP 1 x DP 64" in result.stdout
    assert "73,728 tokens" in result.stdout and ": fits" in result.stdout


def test_pretrain_dry_run_rejects_a_world_size_that_does_not_divide():
    result = _run("slurm/pretrain_t2v_30b.sh", "--dry-run", env={"NODES": "3", "GPUS_PER_NODE": "1"})
    assert result.returncode != 0 and "world size 3 is not divisible" in result.stderr


def test_preencode_dry_run_reports_buckets_without_model_weights(tmp_path):
    from megatron_moviegen.data.bundled import write_bundled_manifest

    manifest = write_bundled_manifest(tmp_path / "manifest.jsonl")
    result = _run("slurm/preencode.sh", "--dry-run",
                  env={"MANIFEST": str(manifest), "OUT": str(tmp_path / "out"), "TAE": "/no/such/tae",
                       "RECIPE": "quickstart"})
    assert result.returncode == 0, result.stderr
    assert '"entries": 4' in result.stdout
