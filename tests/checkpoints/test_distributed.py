"""Loading a dist checkpoint refuses what would silently load wrong: a model of another size (layers dropped
or shapes changed) and a step folder whose tensor files were cut short (the previous complete step is named)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_moviegen.checkpoints.distributed import previous_good_step, prune_steps, storage_problem
from megatron_moviegen.checkpoints.protocol import DIT_STEPS, LATEST
from tests.harness import run_distributed

REPO = Path(__file__).resolve().parents[2]

LOADS = {
    "same model": [],
    "fewer layers": ["model.num_layers=2"],
    "more layers": ["model.num_layers=5"],
    "narrower": ["model.hidden_size=32", "model.ffn_hidden_size=64"],
}


def _save_tiny_steps(root: Path, steps=(1, 2)) -> list[bool]:
    """The tiny DiT saved at `steps` by save_checkpoint, weights only; returns whether dist_checkpointing validated
    the sharding at each save (only the first: the later ones have its structure)."""
    from unittest import mock

    from megatron.core.dist_checkpointing import state_dict_utils

    from megatron_moviegen.checkpoints.distributed import save_checkpoint
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime

    cfg = load_config("tiny")
    init_model_parallel(cfg.parallel, Runtime.resolve())
    chunk = build_dit_chunks(cfg, Runtime.resolve())[0]
    calls, validated = [], []
    real = state_dict_utils.validate_sharding_integrity
    with mock.patch.object(state_dict_utils, "validate_sharding_integrity",
                           side_effect=lambda *args, **kwargs: (calls.append(1), real(*args, **kwargs))[1]):
        for step in steps:
            before = len(calls)
            save_checkpoint(root, step, [chunk], None, None, None, cfg)
            validated.append(len(calls) > before)
    destroy()
    return validated


def _try_load(root: Path, overrides: list[str]) -> str:
    from megatron_moviegen.checkpoints.distributed import CheckpointError, load_checkpoint
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime

    cfg = load_config("tiny", overrides)
    init_model_parallel(cfg.parallel, Runtime.resolve())
    try:
        return f"step {load_checkpoint(root, build_dit_chunks(cfg, Runtime.resolve()), restore_rng=False)}"
    except CheckpointError as exc:
        return f"CheckpointError: {exc}"
    finally:
        destroy()


def _config_beside(step_dir: Path) -> dict:
    """Whether the step's config.yaml loads back into the run's config; then, config.yaml removed (a step saved
    before it was written), whether the step still loads."""
    from megatron_moviegen.checkpoints.protocol import CONFIG_FILE, read_config
    from megatron_moviegen.recipes import MovieGenConfig, load_config

    loads_back = read_config(step_dir, MovieGenConfig) == load_config("tiny")
    (step_dir / CONFIG_FILE).unlink()
    return {"loads back": loads_back, "old format": _try_load(step_dir.parent, [])}


def _load_job(rank, world_size, root):
    root = Path(root)
    validated = _save_tiny_steps(root)
    messages = {name: _try_load(root, overrides) for name, overrides in LOADS.items()}
    messages["validated"] = validated
    messages["config beside the step"] = _config_beside(root / DIT_STEPS.name(2))
    shutil.copytree(root, root.with_name(root.name + "_intact"))
    distcp = sorted((root / DIT_STEPS.name(2)).glob("*.distcp"))[-1]
    distcp.write_bytes(distcp.read_bytes()[: distcp.stat().st_size // 2])
    shutil.copytree(root, root.with_name(root.name + "_truncated"))
    messages["truncated latest"] = _try_load(root, [])
    for file in (root / DIT_STEPS.name(1)).glob("*.distcp"):
        file.unlink()
    messages["truncated, no good step before"] = _try_load(root, [])
    return messages


def _pipeline_job(rank, world_size, root):
    """Saved by 2 data-parallel ranks, loaded as 2 pipeline stages: each stage asks for half the layers."""
    root = Path(root)
    _save_tiny_steps(root, steps=(1,))
    return {name: _try_load(root, ["parallel.pipeline_model_parallel_size=2", *overrides])
            for name, overrides in (("same model", []), ("fewer layers", ["model.num_layers=2"]))}


def test_pipeline_stages_together_load_every_tensor_and_still_refuse_fewer_layers(tmp_path):
    for messages in run_distributed(_pipeline_job, world_size=2, args=(str(tmp_path),)):
        assert messages["same model"] == "step 1"
        assert "checkpoint tensor 'layers.2.cross_attention.linear_kv.weight' (128, 64) is not in this model" \
               in messages["fewer layers"]


@pytest.fixture(scope="module")
def loads(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return root, run_distributed(_load_job, world_size=1, args=(str(root),))[0]


def test_the_saved_model_loads(loads):
    assert loads[1]["same model"] == "step 2"


def test_the_runs_config_is_beside_each_step_and_a_step_without_it_still_loads(loads):
    assert loads[1]["config beside the step"] == {"loads back": True, "old format": "step 2"}


def test_a_save_with_the_structure_of_the_last_validated_one_skips_the_validation(loads):
    assert loads[1]["validated"] == [True, False]


def test_fewer_layers_are_refused_naming_the_first_dropped_tensor(loads):
    root, messages = loads
    assert messages["fewer layers"] == (
        f"CheckpointError: {root / DIT_STEPS.name(2)}: checkpoint tensor 'layers.2.cross_attention.linear_kv.weight' "
        "(128, 64) is not in this model (26 saved tensors would be dropped); saved model.num_layers=4, this model 2")


def test_more_layers_or_another_width_are_refused_naming_tensor_and_shapes(loads):
    _, messages = loads
    assert "this model has tensor 'layers.4.cross_attention.linear_kv.weight' (128, 64) but the checkpoint does " \
           "not; saved model.num_layers=4, this model 5" in messages["more layers"]
    assert "tensor 'context_projection.norm.byt5.bias' is (64,) in the checkpoint but (32,) in this " \
           "model; saved model.ffn_hidden_size=128, this model 64; model.hidden_size=64, this model 32" \
           in messages["narrower"]


def test_truncated_distcp_names_the_file_and_the_previous_good_step(loads):
    root, messages = loads
    message = messages["truncated latest"]
    assert message.startswith(f"CheckpointError: {root / DIT_STEPS.name(2)}/__0_") and ".distcp has " in message
    assert f"the previous complete step is {root / DIT_STEPS.name(1)}" in message
    assert messages["truncated, no good step before"].endswith("there is no earlier complete step beside it")


def test_storage_problem_reads_only_metadata_and_file_sizes(loads, tmp_path):
    root, _ = loads
    copy = tmp_path / DIT_STEPS.name(1)
    shutil.copytree(root / DIT_STEPS.name(2), copy)  # the truncated one
    assert "its metadata needs" in storage_problem(copy)
    (copy / ".metadata").write_bytes(b"\x80")
    assert "cannot be read" in storage_problem(copy)
    assert previous_good_step(root / DIT_STEPS.name(2)) is None  # step 1's files were removed above


@pytest.mark.parametrize("case, says", [
    ("missing", "export_checkpoint: error: checkpoint {root}_absent does not exist"),
    ("fewer layers", "export_checkpoint: error: {root}_intact/iter_0000002: checkpoint tensor 'layers.2."),
    ("truncated", "export_checkpoint: error: {root}_truncated/iter_0000002/__0_"),
])
def test_export_tool_refuses_in_one_line(loads, tmp_path, case, says):
    root, _ = loads
    checkpoint = {"missing": f"{root}_absent", "fewer layers": f"{root}_intact", "truncated": f"{root}_truncated"}
    overrides = ["model.num_layers=2"] if case == "fewer layers" else []
    result = subprocess.run(
        [sys.executable, "tools/export_checkpoint.py", "--checkpoint", checkpoint[case], "--out", str(tmp_path / "out"),
         *overrides], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # one process: no port
    lines = [line for line in result.stderr.splitlines() if "warn" not in line.lower()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(says.format(root=root)), result.stderr
    if case == "truncated":
        assert f"the previous complete step is {root}_truncated/iter_0000001" in lines[0]
    assert not (tmp_path / "out").exists()


def _steps_folder(root: Path, steps, latest: int) -> Path:
    for step in steps:
        (root / DIT_STEPS.name(step)).mkdir(parents=True)
    (root / LATEST).write_text(DIT_STEPS.name(latest))
    return root


def test_retention_keeps_the_newest_steps_latest_and_load_from_and_leaves_later_steps(tmp_path):
    root = _steps_folder(tmp_path / "ckpt", (1, 2, 3, 4, 5, 9), latest=5)  # 9: a run overwritten by this one
    (root / "iter_0000006.tmp").mkdir()  # a save in progress
    (root / ".iter_0000000.deleting").mkdir()  # a delete a killed run left
    deleted = prune_steps(root, root / DIT_STEPS.name(5), keep_last=2, load_from=str(root / DIT_STEPS.name(2)))
    assert [p.name for p in deleted] == ["iter_0000001", "iter_0000003"]
    assert sorted(p.name for p in root.iterdir()) == [
        "iter_0000002", "iter_0000004", "iter_0000005", "iter_0000006.tmp", "iter_0000009", LATEST]


def test_retention_never_deletes_the_step_latest_names(tmp_path):
    root = _steps_folder(tmp_path / "ckpt", (1, 2, 3), latest=1)  # pointed back by hand
    assert [p.name for p in prune_steps(root, root / DIT_STEPS.name(3), keep_last=1)] == ["iter_0000002"]
    assert (root / DIT_STEPS.name(1)).is_dir() and (root / DIT_STEPS.name(3)).is_dir()


TORCH_FULL_DISK = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
                   "file write failed")


def _full_disk_job(rank, world_size, root):
    """The tiny DiT saved at step 1 by save_checkpoint, then a save of step 2 whose rank-state write finds the disk
    full (torch.save's own message, which carries no errno)."""
    from unittest import mock

    import megatron_moviegen.checkpoints.distributed as checkpoints
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler

    root = Path(root)
    runtime = Runtime.resolve(distributed_optimizer=False)
    cfg = load_config("tiny")
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    optimizer = build_optimizer(chunks, cfg.train, runtime)
    scheduler = build_scheduler(optimizer, cfg.train)
    checkpoints.save_checkpoint(root, 1, chunks, optimizer, scheduler, None, cfg)

    def full(obj, path):
        raise RuntimeError(TORCH_FULL_DISK)

    with mock.patch.object(checkpoints, "_atomic_torch_save", full):
        try:
            checkpoints.save_checkpoint(root, 2, chunks, optimizer, scheduler, None, cfg)
            message = "saved"
        except checkpoints.CheckpointError as exc:
            message = str(exc)
    destroy()
    return {"message": message, "names": sorted(p.name for p in root.iterdir()),
            "latest": (root / LATEST).read_text().strip()}


def test_a_full_disk_during_a_save_is_one_clear_error_and_the_last_step_stays(tmp_path):
    result = run_distributed(_full_disk_job, world_size=1, args=(str(tmp_path / "ckpt"),))[0]
    assert result["message"].startswith(f"saving step 2: the disk holding {tmp_path / 'ckpt'} is full (")
    assert "GiB free; RuntimeError: [enforce fail at inline_container.cc:672]" in result["message"]
    assert "the last complete step (iter_0000001) is untouched" in result["message"]
    assert result["names"] == ["iter_0000001", "latest"]  # the incomplete step-2 folder was removed
    assert result["latest"] == "iter_0000001"


def _async_full_disk_job(rank, world_size, root):
    """Step 1 saved; step 2 saved asynchronously while every tensor write of Megatron's background writer finds the
    disk full (ENOSPC, raised in the forked writer process); then the finalize the training loop runs."""
    import errno
    from unittest import mock

    import megatron_moviegen.checkpoints.distributed as checkpoints
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler

    root = Path(root)
    runtime = Runtime.resolve(distributed_optimizer=False)
    cfg = load_config("tiny", ["train.async_save=true"])
    init_model_parallel(cfg.parallel, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    optimizer = build_optimizer(chunks, cfg.train, runtime)
    scheduler = build_scheduler(optimizer, cfg.train)
    checkpoints.save_checkpoint(root, 1, chunks, optimizer, scheduler, None, cfg)
    checkpoints.finalize_async_saves()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch.object(filesystem_async, "_write_item", full):
        checkpoints.save_checkpoint(root, 2, chunks, optimizer, scheduler, None, cfg)
        try:
            checkpoints.finalize_async_saves()
            message = "saved"
        except checkpoints.CheckpointError as exc:
            message = str(exc)
    checkpoints.finalize_async_saves()  # as at exit: nothing left to do
    destroy()
    return {"message": message, "names": sorted(p.name for p in root.iterdir()),
            "latest": (root / LATEST).read_text().strip()}


def test_a_full_disk_in_a_background_save_is_the_same_clear_error_and_the_last_step_stays(tmp_path):
    result = run_distributed(_async_full_disk_job, world_size=1, args=(str(tmp_path / "ckpt"),))[0]
    assert result["message"].startswith(f"saving step 2 (in the background): the disk holding {tmp_path / 'ckpt'} "
                                        "is full ("), result["message"]
    assert "the last complete step (iter_0000001) is untouched" in result["message"]
    assert result["names"] == ["iter_0000001", "latest"] and result["latest"] == "iter_0000001"


def test_full_disk_errors_are_recognised_by_errno_or_torch_message_and_others_are_not():
    import errno

    from megatron_moviegen.utils.io import is_full_disk

    assert is_full_disk(OSError(errno.ENOSPC, "No space left on device"))
    assert is_full_disk(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_full_disk(RuntimeError(TORCH_FULL_DISK))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("writing shard 3 failed") from inner
    except RuntimeError as outer:
        assert is_full_disk(outer)  # through the chain
    assert not is_full_disk(OSError(errno.EIO, "Input/output error"))
    assert not is_full_disk(PermissionError(errno.EACCES, "Permission denied"))
    assert not is_full_disk(RuntimeError("shape mismatch"))


def test_the_structure_digest_changes_with_where_a_shard_sits_not_with_its_values():
    import torch
    from megatron.core.dist_checkpointing import ShardedTensor

    from megatron_moviegen.checkpoints.distributed import structure_digest

    def state(values, key="w", replica=0, rows=4):
        return {"model": {key: ShardedTensor.from_rank_offsets(key, values[:rows], replica_id=replica)}, "step": 1}

    digest = structure_digest(state(torch.zeros(4, 2)))
    assert structure_digest(state(torch.ones(4, 2))) == digest
    for other in (state(torch.zeros(4, 2), key="v"), state(torch.zeros(4, 2), replica=1),
                  state(torch.zeros(4, 2), rows=3), state(torch.zeros(4, 2, dtype=torch.bfloat16))):
        assert structure_digest(other) != digest
