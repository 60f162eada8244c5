"""Non-finite losses on 2 data-parallel ranks: weights that give one are never saved, a NaN sample is named (shard,
key, source) on every rank and stops the run, or is skipped without an update when asked, up to a limit."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed

POISONED = "shard-000001.tar/000000003"  # a 16:9 clip (bucket 32x48x80)


def poison_sample(shards: Path, out: Path, shard: str, key: str) -> None:
    """A copy of `shards` whose sample `key` has NaN latents (rewritten in place: same bytes, same offsets)."""
    shutil.copytree(shards, out)
    record = next(r for r in json.loads((out / "index" / f"{shard}.json").read_text())["samples"] if r["key"] == key)
    offset, size = record["members"]["latents.safetensors"]
    with open(out / shard, "r+b") as tar:
        tar.seek(offset)
        latents = load_safetensors(tar.read(size))["latents"]
        poisoned = save_safetensors({"latents": torch.full_like(latents, float("nan"))})
        assert len(poisoned) == size
        tar.seek(offset)
        tar.write(poisoned)


def _overrides(shards, ckpt, extra):
    return [f"data.shards={shards}", f"train.checkpoint_dir={ckpt}", "train.steps=4", "train.global_batch_size=2",
            "train.save_every=2", "train.lr=1e-3", "train.lr_warmup_steps=0", "train.progress_bar=false", *extra]


def _runs(rank, world_size, shards, poisoned, root):
    """Every scenario, one pretrain after another in these 2 ranks: (error or result, saved steps) by name."""
    from megatron.core import dist_checkpointing

    from megatron_moviegen.training.pretrain import pretrain

    scenarios = {
        "diverging": (shards, ["train.lr=1e30", "train.clip_grad=0.0", "train.save_every=1"]),
        "nan sample": (poisoned, []),
        "skipped": (poisoned, ["train.skip_nonfinite_batches=true", "train.max_skipped_batches=2"]),
        "over the limit": (poisoned, ["train.skip_nonfinite_batches=true", "train.max_skipped_batches=1"]),
    }
    out = {}
    for name, (data, extra) in scenarios.items():
        ckpt = Path(root) / name.replace(" ", "_")
        try:
            result = pretrain(load_config("tiny", _overrides(data, ckpt, extra)))
            outcome = {"history": result.history, "skipped": result.skipped,
                       "updates": dist_checkpointing.load_common_state_dict(str(ckpt / "iter_0000004"))
                       ["scheduler"]["num_steps"]}
        except Exception as exc:  # returned to the parent for inspection
            outcome = f"{type(exc).__name__}: {exc}"
        latest = (ckpt / "latest").read_text() if (ckpt / "latest").exists() else None
        out[name] = (outcome, latest, sorted(p.name for p in ckpt.glob("iter_*")))
    return out


@pytest.fixture(scope="module")
def runs(tiny_shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    poison_sample(tiny_shards, root / "poisoned", "shard-000001.tar", "000000003")
    ranks = run_distributed(_runs, 2, args=(tiny_shards, root / "poisoned", root))
    decided = [{name: (o if isinstance(o, str) else o["skipped"], *saved) for name, (o, *saved) in r.items()}
               for r in ranks]
    assert repr(decided[0]) == repr(decided[1])  # every rank stopped or skipped alike, naming the same samples
    return ranks[0]


def test_weights_that_give_a_nonfinite_loss_are_never_saved(runs):
    # lr 1e30: step 1's loss is finite, its update leaves weights near 1e30. Before, step 1 was saved and named
    # "last good checkpoint" when step 2's loss came out NaN.
    error, latest, saved = runs["diverging"]
    assert error.startswith("NonFiniteLossError: the weights after step 1 give loss nan on the batch of step 1 "
                            "(bucket "), error
    assert error.endswith("whose own loss was finite; stopping without saving. "
                          "Last good checkpoint: none, nothing was saved")
    assert (latest, saved) == (None, [])


def test_a_nan_sample_stops_the_run_naming_step_bucket_and_sample(runs):
    error, latest, saved = runs["nan sample"]
    assert error.startswith("NonFiniteLossError: loss is nan at step "), error
    step = int(error.split("at step ")[1].split()[0])
    # Only the poisoned sample is named (its microbatch), though each rank read another sample that step.
    assert f"(bucket 32x48x80; samples {POISONED} (" in error and "bigbuckbunny.mp4)); " in error, error
    assert "train.skip_nonfinite_batches=true skips such batches; stopping without saving" in error
    assert saved == [f"iter_{s:07d}" for s in (2,) if s < step] and latest == (saved[-1] if saved else None)


def test_skipped_batches_make_no_update_and_the_run_finishes(runs):
    result, latest, saved = runs["skipped"]
    assert len(result["skipped"]) == 2  # once an epoch
    for skip in result["skipped"]:
        assert len(skip["samples"]) == 1 and skip["samples"][0].startswith(f"{POISONED} (")
        assert skip["bucket"] == "32x48x80" and skip["loss"] != skip["loss"]  # NaN
    skipped_steps = {s["step"] for s in result["skipped"]}
    assert sorted(row["step"] for row in result["history"]) == sorted({1, 2, 3, 4} - skipped_steps)
    assert all(row["loss"] == row["loss"] for row in result["history"])
    assert result["updates"] == 2  # the scheduler (and optimizer) stepped on the 2 good steps only
    assert (latest, saved) == ("iter_0000004", ["iter_0000002", "iter_0000004"])


def test_skipping_stops_at_max_skipped_batches(runs):
    error, _, _ = runs["over the limit"]
    assert error.startswith("NonFiniteLossError: loss is nan at step "), error
    assert f"samples {POISONED} (" in error and "1 batches skipped already (train.max_skipped_batches)" in error
