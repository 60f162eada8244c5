"""A checkpoint records the encoders of the shards it was trained on; a resume or train.load_from onto shards of
another encoder is refused naming both, unless train.allow_new_encoders asks for it."""


import pytest

from megatron_moviegen.checkpoints.export import read_exported_config
from megatron_moviegen.config import ConfigError
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.config.schema import build
from megatron_moviegen.data.manifest import read_manifest
from megatron_moviegen.data.preencode import Preencoder, encoder_record
from megatron_moviegen.data.shards import shard_encoders
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed
from tests.training.conftest import TINY_BUCKETS
from tests.training.test_pretrain import _in_turn, _overrides, _train, _train_expecting_error


@pytest.fixture(scope="module")
def other_shards(tiny_shards, tmp_path_factory):
    """The same clips as tiny_shards, their latents from a toy TAE with other weights (seed 1)."""
    config = build(DataConfig, {"buckets": TINY_BUCKETS, "shard_size": 2, "num_workers": 0, "image_fraction": 0.0})
    out = tmp_path_factory.mktemp("other_encoder") / "shards"
    text = TinyTextEncoders.for_model(load_config("tiny").model)
    Preencoder(config, TinyVideoEncoder(seed=1), text, out).run(read_manifest(tiny_shards.parent / "manifest.jsonl"))
    return out


def _export(rank, world_size, checkpoint, out):
    from megatron_moviegen.checkpoints.export import export_training_checkpoint
    from megatron_moviegen.parallel.initialize import destroy

    destroy()  # the training run's groups; the export sets up its own
    export_training_checkpoint(checkpoint, out)


def _saved_encoders(step_dir):
    from megatron_moviegen.checkpoints.distributed import read_saved_config

    return read_saved_config(step_dir)["model"]["trained_encoders"]


def test_resume_or_load_from_onto_shards_of_another_tae_is_refused_naming_both(tiny_shards, other_shards, tmp_path):
    ckpt, stage = tmp_path / "ckpt", tmp_path / "stage"
    allowed = ["train.allow_new_encoders=true"]
    trained, resumed, loaded, fine_tuned, _ = run_distributed(_in_turn, 1, args=([
        (_train, (_overrides(tiny_shards, ckpt, 2),)),
        (_train_expecting_error, (_overrides(other_shards, ckpt, 4),)),
        (_train_expecting_error, (_overrides(other_shards, stage, 2, [f"train.load_from={ckpt}"]),)),
        (_train, (_overrides(other_shards, stage, 2, [f"train.load_from={ckpt}", *allowed]),)),
        (_export, (stage, tmp_path / "export")),
    ],))[0]
    old, new = (encoder_record(TinyVideoEncoder(seed=s))["sha256"][:12] for s in (0, 1))
    for message in (resumed, loaded):
        assert message.startswith("ConfigError: data.shards ")
        assert f"were encoded by video encoder TinyVideoEncoder (weights sha256 {new})" in message
        assert f"was trained on video encoder TinyVideoEncoder (weights sha256 {old})" in message
        assert "train.allow_new_encoders=true" in message and "text encoder" not in message
    assert str(ckpt / "iter_0000002") in resumed
    assert fine_tuned["step"] == 2 and not (ckpt / "iter_0000004").exists()
    # Each checkpoint records the shards it was trained on: the fine-tuned one, the new encoder.
    assert _saved_encoders(ckpt / "iter_0000002") == shard_encoders(tiny_shards)
    assert _saved_encoders(stage / "iter_0000002") == shard_encoders(other_shards)
    assert shard_encoders(other_shards)["video"]["sha256"].startswith(new)
    assert read_exported_config(tmp_path / "export").model.trained_encoders == shard_encoders(other_shards)


def test_the_same_encoders_resume_and_an_unrecorded_side_is_no_mismatch(tiny_shards, tmp_path):
    from megatron_moviegen.data.shards import encoder_mismatch

    record = shard_encoders(tiny_shards)
    assert set(record) == {"video", "text"}
    assert encoder_mismatch(record, record) == [] and encoder_mismatch({}, record) == []
    assert encoder_mismatch(record, {"video": record["video"]}) == []  # a role only one side has


def test_allow_new_encoders_needs_a_checkpoint_to_compare_with():
    with pytest.raises(ConfigError, match="allow_new_encoders: true, but resume is false and load_from is not set"):
        load_config("tiny", ["train.allow_new_encoders=true", "train.resume=false"])
    assert load_config("tiny", ["train.allow_new_encoders=true"]).train.allow_new_encoders
