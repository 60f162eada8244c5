"""Moving to the next stage: previous weights load, position tables grow (SPEC section 4)."""

import pytest
import torch

from megatron_moviegen.recipes import load_config
from megatron_moviegen.checkpoints.stages import grow_table
from tests.harness import run_distributed


def _ramp(n):
    return torch.arange(float(n))[:, None] * torch.tensor([1.0, 2.0, -1.0])  # (n, 3): row i holds i * (1, 2, -1)


def test_same_resolution_growth_keeps_learned_rows_and_extends_with_the_last():
    table = _ramp(16)
    grown = grow_table(table, 32)
    assert grown.shape == (32, 3)
    assert torch.equal(grown[:16], table)  # a square image keeps the positions it was trained with
    assert torch.equal(grown[16:], table[-1].expand(16, 3))
    assert grow_table(table, 16) is table


def test_resolution_change_resamples_at_the_ratio_so_scene_positions_line_up():
    table = _ramp(21)  # stage 2's 256 px table: row i at scene position (i + 0.5) / 21 of a 336 px side
    grown = grow_table(table, 64, scale=3.0)  # 768 px: 64 rows
    # Row 3k + 1 is the centre of the old row k's three sub-tokens: exactly old row k.
    for k in (0, 5, 20):
        assert torch.allclose(grown[3 * k + 1], table[k])
    # Rows between take the linear blend of their neighbours: position (j + 0.5) / 3 - 0.5.
    assert torch.allclose(grown[2], table[0] + (table[1] - table[0]) / 3)
    assert torch.equal(grown[0], table[0]) and torch.equal(grown[-1], table[-1])  # clamped past the ends


def test_tables_never_shrink_and_resolution_never_drops():
    with pytest.raises(ValueError, match="shrinks from 16 to 8"):
        grow_table(_ramp(16), 8)
    with pytest.raises(ValueError, match="scale: got 0.5"):
        grow_table(_ramp(16), 16, scale=0.5)


def _stage(rank, world_size, old_dir):
    from megatron_moviegen.parallel.build import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.checkpoints.distributed import save_checkpoint
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
    load_weights_for_new_stage(str(old_dir), new, resolution=small.data.buckets.resolution)
    same = {k: v.detach().clone() for k, v in new[0].named_parameters()}
    load_weights_for_new_stage(str(old_dir), new, resolution=2 * small.data.buckets.resolution)
    result = {"old": {k: v.detach().clone() for k, v in old[0].named_parameters()}, "new": same,
              "doubled": {k: v.detach().clone() for k, v in new[0].named_parameters()}}
    destroy()
    return result


def test_next_stage_loads_all_weights_and_grows_the_spatial_tables(tmp_path):
    result = run_distributed(_stage, 1, args=(tmp_path / "stage1",))[0]
    old, new = result["old"], result["new"]
    for name, tensor in old.items():
        if name.startswith("position_embedding."):
            continue
        assert torch.equal(new[name], tensor), name
    assert torch.equal(new["position_embedding.t"], old["position_embedding.t"])
    assert new["position_embedding.h"].shape[0] == 16 and old["position_embedding.h"].shape[0] == 8
    assert torch.equal(new["position_embedding.h"][:8], old["position_embedding.h"])
    assert torch.equal(new["position_embedding.h"], grow_table(old["position_embedding.h"], 16))
    doubled = result["doubled"]
    for name in ("h", "w"):
        old_table = old[f"position_embedding.{name}"]
        assert torch.equal(doubled[f"position_embedding.{name}"], grow_table(old_table, 16, scale=2.0))
    assert torch.equal(doubled["position_embedding.t"], old["position_embedding.t"])  # time is not resampled
