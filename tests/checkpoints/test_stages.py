"""Moving to the next stage: previous weights load, position tables grow (SPEC section 4)."""

import pytest
import torch

from megatron_moviegen.recipes import load_config
from megatron_moviegen.checkpoints.stages import grow_table
from tests.harness import run_distributed


def test_grown_table_keeps_its_endpoints_and_interpolates_between():
    table = torch.arange(8.0)[:, None] * torch.tensor([1.0, 2.0, -1.0])  # (8, 3)
    grown = grow_table(table, 15)
    assert grown.shape == (15, 3)
    assert torch.equal(grown[0], table[0]) and torch.equal(grown[-1], table[-1])
    assert torch.allclose(grown[1], (table[0] + table[1]) / 2)
    assert grown is not table and grow_table(table, 8) is table


def _stage(rank, world_size, old_dir):
    from megatron_moviegen.parallel.build import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.checkpoints.distributed import CheckpointError, save_checkpoint
    from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage

    small = load_config("tiny", ["model.max_height=8", "model.max_width=8"])
    init_model_parallel(small.parallel)
    torch.manual_seed(0)
    old = build_dit_chunks(small)
    optimizer = build_optimizer(old, small.train, False, False)
    save_checkpoint(old_dir, 1, old, optimizer, build_scheduler(optimizer, small.train), None, small)
    big = load_config("tiny", ["model.max_height=16", "model.max_width=16"])
    torch.manual_seed(1)
    new = build_dit_chunks(big)
    load_weights_for_new_stage(str(old_dir), new)
    result = {"old": {k: v.detach().clone() for k, v in old[0].named_parameters()},
              "new": {k: v.detach().clone() for k, v in new[0].named_parameters()}}
    shallower = build_dit_chunks(load_config("tiny", ["model.max_height=16", "model.max_width=16",
                                                      "model.num_layers=2"]))
    try:
        load_weights_for_new_stage(str(old_dir), shallower)
    except CheckpointError as exc:
        result["fewer layers"] = str(exc)
    destroy()
    return result


@pytest.fixture(scope="module")
def stage_result(tmp_path_factory):
    return run_distributed(_stage, 1, args=(tmp_path_factory.mktemp("stages") / "stage1",))[0]


def test_next_stage_loads_all_weights_and_grows_the_spatial_tables(stage_result):
    old, new = stage_result["old"], stage_result["new"]
    for name, tensor in old.items():
        if name.startswith("position_embedding."):
            continue
        assert torch.equal(new[name], tensor), name
    assert torch.equal(new["position_embedding.t"], old["position_embedding.t"])
    assert new["position_embedding.h"].shape[0] == 16 and old["position_embedding.h"].shape[0] == 8
    assert torch.equal(new["position_embedding.h"], grow_table(old["position_embedding.h"], 16))


def test_next_stage_with_fewer_layers_is_refused_naming_the_dropped_tensor(stage_result):
    message = stage_result["fewer layers"]
    assert "checkpoint tensor 'layers.2.cross_attention.linear_kv.weight' (128, 64) is not in this model" in message
    assert "model.num_layers=4, this model 2" in message
