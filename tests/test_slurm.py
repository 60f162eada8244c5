"""The SLURM scripts parse, their dry runs resolve the layout without launching anything, and under fake
srun/scontrol they forward the pre-time-limit SIGUSR1 to the step and requeue the job."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


FAKE_SRUN = """#!/bin/bash
# Records its arguments; on SIGUSR1 takes a while to "save", then exits with $FAKE_EXIT_AFTER_USR1.
echo "$*" > "$FAKE_LOG/srun.args"
trap 'echo USR1 >> "$FAKE_LOG/srun.signals"; sleep 0.5; touch "$FAKE_LOG/srun.saved"; exit "$FAKE_EXIT_AFTER_USR1"' USR1
touch "$FAKE_LOG/srun.started"
[[ "$FAKE_SRUN" == finish ]] && exit 0
while true; do sleep 0.05; done
"""
# Records each call and whether the step had finished saving by then; `show hostnames` prints a node.
FAKE_SCONTROL = """#!/bin/bash
echo "$* saved=$([[ -e $FAKE_LOG/srun.saved ]] && echo yes || echo no)" >> "$FAKE_LOG/scontrol.calls"
[[ "$1" == show ]] && echo node001
exit 0
"""
FAKE_SCANCEL = """#!/bin/bash
echo "$*" >> "$FAKE_LOG/scancel.calls"
"""
SCRIPTS = {"pretrain": "slurm/pretrain_t2v_30b.sh", "preencode": "slurm/preencode.sh"}


def _fake_slurm(tmp_path, srun: str = "wait", exit_after_usr1: int = 0, extra_env: dict | None = None) -> dict:
    """Fake srun/scontrol/scancel on PATH, a container image in the submit folder (tmp_path): the batch job's env."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "megatron-moviegen.sqsh").write_bytes(b"hsqs")
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "FAKE_SRUN": srun,
            "FAKE_EXIT_AFTER_USR1": str(exit_after_usr1), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[001-002]",
            "SLURM_SUBMIT_DIR": str(tmp_path), "MANIFEST": "/data/clips.jsonl", "OUT": "/data/latents",
            "TAE": "/models/tae", **(extra_env or {})}


def _batch_job(tmp_path, script: str, srun: str = "wait", exit_after_usr1: int = 0, signal_it: bool = True,
               extra_env: dict | None = None):
    """Runs `script` as SLURM would (fake srun/scontrol/scancel on PATH), optionally sending the batch shell
    SIGUSR1 once the step runs; returns (exit code, {log name: lines})."""
    log = tmp_path / "log"
    env = _fake_slurm(tmp_path, srun, exit_after_usr1, extra_env)
    proc = subprocess.Popen(["bash", str(REPO / script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (log / "srun.started").exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        if signal_it:
            proc.send_signal(signal.SIGUSR1)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    logs = {p.name: p.read_text().splitlines() for p in log.iterdir() if p.is_file()}
    return proc.returncode, logs, stdout + stderr


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_usr1_reaches_the_srun_step_and_the_job_is_requeued_after_it_exits(tmp_path, name):
    code, logs, output = _batch_job(tmp_path, SCRIPTS[name])
    assert code == 0, output
    assert logs["srun.signals"] == ["USR1"]
    assert "requeue 4242 saved=yes" in logs["scontrol.calls"], logs["scontrol.calls"]
    command = {"pretrain": "python -m megatron_moviegen.train --config t2iv_768",
               "preencode": "python tools/preencode_latents.py --config t2iv_768"}[name]
    assert command in logs["srun.args"][0]
    assert "scancel.calls" not in logs


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_step_that_finishes_is_not_requeued(tmp_path, name):
    code, logs, output = _batch_job(tmp_path, SCRIPTS[name], srun="finish", signal_it=False)
    assert code == 0, output
    assert "srun.signals" not in logs
    assert not [call for call in logs.get("scontrol.calls", []) if call.startswith("requeue")]


def test_training_that_fails_after_usr1_is_not_requeued(tmp_path):
    code, logs, output = _batch_job(tmp_path, SCRIPTS["pretrain"], exit_after_usr1=3)
    assert code == 3 and logs["srun.signals"] == ["USR1"]
    assert not [call for call in logs["scontrol.calls"] if call.startswith("requeue")]
    assert "exited with 3 after SIGUSR1; not requeueing" in output


def test_an_audio_recipe_preencodes_with_the_audio_autoencoder_and_t5(tmp_path):
    env = {"RECIPE": "audio_13b", "AUDIO_AE": "/models/audio_ae", "TAE": ""}
    code, logs, output = _batch_job(tmp_path, SCRIPTS["preencode"], srun="finish", signal_it=False, extra_env=env)
    assert code == 0, output
    args = logs["srun.args"][0]
    assert "--config audio_13b" in args and "--audio-ae /models/audio_ae" in args and "--tae" not in args
    assert "--text t5.path=/models/t5-base" in args


def _directives(script: str) -> dict:
    """The script's `#SBATCH --name=value` lines as {name: value} ("" for a flag such as --exclusive)."""
    lines = (REPO / script).read_text().splitlines()
    pairs = (line.removeprefix("#SBATCH --").partition("=") for line in lines if line.startswith("#SBATCH --"))
    return {name: value for name, _, value in pairs}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_log_opens_in_the_submit_folder_and_a_requeued_job_appends_to_it(name):
    # SLURM opens --output before the script runs: a folder in its path would have to exist already, or the job
    # fails without a word. A requeued job keeps its id (%j), so without append it would wipe its first run's log.
    directives = _directives(SCRIPTS[name])
    assert "/" not in directives["output"], directives["output"]
    assert directives["open-mode"] == "append"
    assert "mkdir -p logs" not in (REPO / SCRIPTS[name]).read_text()


@pytest.mark.parametrize("name", list(SCRIPTS))
@pytest.mark.parametrize("image, says", [
    ("megatron-moviegen:latest", "CONTAINER_IMAGE: got 'megatron-moviegen:latest', need an existing .sqsh file"),
    ("/no/such/image.sqsh", "CONTAINER_IMAGE: no file /no/such/image.sqsh; build it"),
], ids=["docker-tag", "missing-sqsh"])
def test_a_container_image_pyxis_cannot_use_is_refused_before_srun(tmp_path, name, image, says):
    env = _fake_slurm(tmp_path, extra_env={"CONTAINER_IMAGE": image})
    result = subprocess.run(["bash", str(REPO / SCRIPTS[name])], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "log" / "srun.args").exists()


@pytest.mark.parametrize("image", ["", "nvcr.io#nvidia/pytorch:25.10-py3", "dockerd://megatron-moviegen"],
                         ids=["default-sqsh", "registry", "dockerd"])
def test_a_sqsh_in_the_submit_folder_or_a_registry_image_reaches_srun(tmp_path, image):
    env = {"CONTAINER_IMAGE": image} if image else {}
    code, logs, output = _batch_job(tmp_path, SCRIPTS["pretrain"], srun="finish", signal_it=False, extra_env=env)
    assert code == 0, output
    expected = image or str(tmp_path / "megatron-moviegen.sqsh")
    assert f"--container-image={expected} " in logs["srun.args"][0]


@pytest.mark.parametrize("decoder, expected", [
    ("", "--set decoder=pyav --num-workers 8"),
    ("dali-gpu", "--set decoder=dali-gpu --num-workers 0"),
], ids=["pyav", "dali-gpu"])
def test_preencode_runs_decode_workers_only_for_pyav(tmp_path, decoder, expected):
    # DALI decodes in-process: the tool refuses num_workers > 0 with it.
    env = {"DECODER": decoder} if decoder else {}
    code, logs, output = _batch_job(tmp_path, SCRIPTS["preencode"], srun="finish", signal_it=False, extra_env=env)
    assert code == 0, output
    assert expected in logs["srun.args"][0]


def test_preencode_refuses_an_unknown_decoder(tmp_path):
    env = _fake_slurm(tmp_path, extra_env={"DECODER": "nvdec"})
    result = subprocess.run(["bash", str(REPO / SCRIPTS["preencode"])], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 2 and "DECODER: got 'nvdec', need pyav, dali-gpu or dali-cpu" in result.stderr


def test_the_scripts_decoder_and_the_users_overrides_both_reach_the_data_config():
    import runpy

    parse_args = runpy.run_path(str(REPO / "tools" / "preencode_latents.py"))["parse_args"]
    args = parse_args(["--manifest", "m.jsonl", "--out", "o", "--dry-run", "--set", "decoder=dali-gpu",
                       "--set", "audio.video_encoder=/models/metaclip-h14", "shard_size=4"])
    assert args.set == ["decoder=dali-gpu", "audio.video_encoder=/models/metaclip-h14", "shard_size=4"]


def _seconds(duration: str) -> int:
    hours, minutes, seconds = (int(part) for part in duration.split(":"))
    return 3600 * hours + 60 * minutes + seconds


@pytest.mark.parametrize("recipe", ["t2i_256", "t2iv_256", "t2iv_768", "sft", "upsampler_7b", "audio_13b"])
def test_a_gpu_recipe_saves_by_time_inside_one_allocation_of_the_pretraining_script(recipe):
    from megatron_moviegen.recipes import load_config

    directives = _directives(SCRIPTS["pretrain"])
    usable = _seconds(directives["time"]) - int(directives["signal"].split("@")[1])
    minutes = load_config(recipe).train.save_every_minutes
    assert minutes is not None and minutes * 60 < usable / 2, (minutes, usable)
