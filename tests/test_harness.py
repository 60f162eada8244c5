import torch
import torch.distributed as dist

from tests.harness import run_distributed


def _all_reduce_rank(rank, world_size):
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    return {"rank": rank, "sum": value.item(), "world": dist.get_world_size()}


def test_harness_runs_every_rank_and_collects_in_rank_order():
    results = run_distributed(_all_reduce_rank, world_size=2)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["sum"] == 3.0 and r["world"] == 2 for r in results)


def _raise_on_rank_one(rank, world_size):
    if rank == 1:
        raise RuntimeError("rank one failed on purpose")
    return rank


def test_harness_reraises_a_failing_rank():
    import pytest

    with pytest.raises(Exception, match="rank one failed on purpose"):
        run_distributed(_raise_on_rank_one, world_size=2)
