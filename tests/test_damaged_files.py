"""Every kind of file the project reads, damaged three ways (empty, cut to half, random bytes): its reader stops
with one line naming the file, from this project (no library traceback), and leaves every file as it was.

The artefacts are built once per module: tiny shards (tests/training/conftest.py), one 2-step checkpoint on one
process, its export, a toy TAE folder. Each case copies its artefact, damages one file and calls the reader the
commands call; the checkpoint's cases run in one launch (they need a process group)."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from megatron_moviegen.checkpoints.distributed import CheckpointError
from megatron_moviegen.config import ConfigError
from megatron_moviegen.recipes import RECIPE_DIR
from tests.harness import run_distributed
from tests.training.conftest import tiny_shards  # noqa: F401  (the module-wide shards fixture)

DAMAGES = {
    "empty": lambda data: b"",
    "half": lambda data: data[: len(data) // 2],
    "garbage": lambda data: bytes(hashlib.sha256(bytes([i % 251])).digest()[0] for i in range(max(64, len(data)))),
}
OURS = (ConfigError, CheckpointError)  # DamagedFileError, ManifestError and DamagedShardError are ConfigErrors


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(DAMAGES[how](data))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).digest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def changed(before: dict, after: dict) -> list[str]:
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


def check_one_line_naming(message: str, damaged: Path) -> None:
    assert "\n" not in message.strip(), message
    assert str(damaged) in message, f"{damaged} not named in: {message}"


# ---- readers (what the commands call), each given the copied artefact's root -------------------------------------

def read_recipe(root):
    from megatron_moviegen.recipes import load_config

    load_config(root / "recipe.yaml")


def read_manifest(root):
    from megatron_moviegen.data.manifest import read_manifest

    read_manifest(root / "manifest.jsonl")


def read_shards(root):
    from megatron_moviegen.data.loader import LatentLoader

    list(LatentLoader(root, batch_size=1, image_fraction=0.0, seed=0).records())  # the table, then every index


def read_shard_encoders(root):
    from megatron_moviegen.data.shards import shard_encoders

    shard_encoders(root)


def read_export(root):
    from megatron_moviegen.checkpoints.export import read_export_tensors, read_exported_config

    read_exported_config(root)
    read_export_tensors(root)


def read_tae(root):
    from megatron_moviegen.inference.components import load_tae

    load_tae(str(root))


# kind: (artefact fixture, file inside it, reader)
IN_PROCESS = {
    "recipe": ("recipe_folder", "recipe.yaml", read_recipe),
    "manifest": ("manifest_folder", "manifest.jsonl", read_manifest),
    "shard index": ("tiny_shards", "index/shard-000000.tar.json", read_shards),
    "shard table": ("tiny_shards", "index/table.json", read_shards),
    "pre-encoding record": ("tiny_shards", "preencode.json", read_shard_encoders),
    "export config": ("export_folder", "config.yaml", read_export),
    "export index": ("export_folder", "model.safetensors.index.json", read_export),
    "export tensors": ("export_folder", "model-00001-of-00001.safetensors", read_export),
    "TAE config and latent stats": ("tae_folder", "config.json", read_tae),
    "TAE weights": ("tae_folder", "model.safetensors", read_tae),
}
CHECKPOINT_FILES = ("latest", "iter_0000002/metadata.json", "iter_0000002/.metadata", "iter_0000002/common.pt",
                    "iter_0000002/__0_0.distcp", "iter_0000002/rank_state/dp00000.pt",
                    "iter_0000002/rank_state/rank00000.pt")


@pytest.fixture(scope="module")
def recipe_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    shutil.copy(RECIPE_DIR / "tiny.yaml", root / "recipe.yaml")
    return root


@pytest.fixture(scope="module")
def manifest_folder(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    shutil.copy(tiny_shards.parent / "manifest.jsonl", root / "manifest.jsonl")
    return root


@pytest.fixture(scope="module")
def tae_folder(tmp_path_factory):
    from megatron_moviegen.inference.components import tiny_tae

    root = tmp_path_factory.mktemp("tae") / "tae"
    tiny_tae().save_pretrained(root)
    return root


def _overrides(shards, ckpt, extra=()):
    return [f"data.shards={shards}", f"train.checkpoint_dir={ckpt}", "train.steps=2", "train.global_batch_size=2",
            "train.save_every=2", "train.progress_bar=false", "data.image_fraction=0.0", *extra]


def _checkpoint_cases(rank, world_size, shards, root):
    """Train 2 steps into root/ckpt and export it to root/export; then, for each checkpoint file and damage, a
    copy of the folder with that file damaged is resumed: {(file, damage): (error type, message, files changed)}."""
    from megatron_moviegen.checkpoints.distributed import finalize_async_saves
    from megatron_moviegen.checkpoints.export import export_training_checkpoint
    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.training.pretrain import pretrain
    from torch.distributed.checkpoint.api import CheckpointException

    pretrain(load_config("tiny", _overrides(shards, root / "ckpt")))
    finalize_async_saves()
    destroy()
    export_training_checkpoint(root / "ckpt", root / "export", dtype=__import__("torch").float32)
    results = {}
    for name in CHECKPOINT_FILES:
        for how in DAMAGES:
            case = root / "cases" / f"{name.replace('/', '_')}-{how}"
            shutil.copytree(root / "ckpt", case)
            damage(case / name, how)
            before = snapshot(case)
            try:
                pretrain(load_config("tiny", _overrides(shards, case, ["train.steps=3"])))
                results[name, how] = (None, "no error", changed(before, snapshot(case)))
            except (Exception, CheckpointException) as exc:  # returned to the parent for inspection
                results[name, how] = (type(exc), str(exc), changed(before, snapshot(case)))
            finally:
                destroy()
    return results


@pytest.fixture(scope="module")
def checkpoint_cases(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged_checkpoints")
    return root, run_distributed(_checkpoint_cases, 1, args=(tiny_shards, root))[0]


@pytest.fixture(scope="module")
def export_folder(checkpoint_cases):
    return checkpoint_cases[0] / "export"


@pytest.mark.parametrize("how", list(DAMAGES))
@pytest.mark.parametrize("kind", list(IN_PROCESS))
def test_a_damaged_file_is_one_error_naming_it_and_nothing_is_touched(kind, how, request, tmp_path):
    fixture, name, reader = IN_PROCESS[kind]
    root = tmp_path / "copy"
    shutil.copytree(request.getfixturevalue(fixture), root)
    reader(root)  # the undamaged copy reads
    damage(root / name, how)
    before = snapshot(root)
    with pytest.raises(OURS) as caught:
        reader(root)
    check_one_line_naming(str(caught.value), root / name)
    assert snapshot(root) == before


@pytest.mark.parametrize("how", list(DAMAGES))
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_resume_from_a_damaged_checkpoint_file_is_one_error_naming_it(name, how, checkpoint_cases):
    root, results = checkpoint_cases
    error, message, touched = results[name, how]
    assert error is not None and issubclass(error, OURS), f"{error}: {message}"
    check_one_line_naming(message, root / "cases" / f"{name.replace('/', '_')}-{how}" / name)
    assert [name for name in touched if name != ".lock"] == []  # the run's lock file names its holder, by design
