"""The training feeder: one rank of a TP group reads (ahead), the others receive the same batches, and the position
saved is the one after the last batch the loop took."""

from itertools import islice

import pytest
import torch

from megatron_moviegen.data.loader import LatentLoader
from tests.data.test_loader import synthetic_shards
from tests.harness import run_distributed

SETTINGS = dict(batch_size=4, image_fraction=0.25, seed=3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("feeder")
    synthetic_shards(out)
    return out


def _fingerprint(batch):
    return {"latents": batch.latents.clone(), "ul2": batch.conditioning.tokens["ul2"].embeddings.clone(),
            "mask": batch.conditioning.tokens["ul2"].mask.clone(), "keys": list(batch.keys),
            "bucket": batch.bucket, "captions": list(batch.captions), "fps": batch.fps.clone()}


def _tp_group_job(rank, world_size, shards, prefetch):
    """Both ranks form one TP group: 5 batches through the feeder, the position after 3; the number of samples
    each rank read itself."""
    import torch.distributed as dist

    from megatron_moviegen.data.feeder import BatchFeeder

    loader = LatentLoader(shards, **SETTINGS)
    reads = []
    original = loader.read_sample
    loader.read_sample = lambda shard, record: reads.append(record["key"]) or original(shard, record)
    feeder = BatchFeeder(loader, prefetch, group=dist.new_group([0, 1]), device=torch.device("cpu"))
    batches = [_fingerprint(b) for b in islice(feeder, 3)]
    position = feeder.state_dict()
    batches += [_fingerprint(b) for b in islice(feeder, 2)]
    feeder.close()
    return {"batches": batches, "position": position, "reads": len(reads)}


@pytest.mark.parametrize("prefetch", [0, 2])
def test_one_rank_reads_and_the_group_trains_on_the_same_batches_as_a_plain_loader(shards, prefetch):
    ranks = run_distributed(_tp_group_job, 2, args=(shards, prefetch))
    plain = LatentLoader(shards, **SETTINGS)
    expected = [_fingerprint(b) for b in islice(iter(plain), 5)]
    for rank in ranks:
        for got, want in zip(rank["batches"], expected, strict=True):
            for name in want:
                same = torch.equal(got[name], want[name]) if isinstance(want[name], torch.Tensor) else \
                    got[name] == want[name]
                assert same, name
    assert ranks[1]["reads"] == 0 and ranks[0]["reads"] >= 5 * SETTINGS["batch_size"]
    # The position of the loop, not of the read-ahead: resuming from it continues with the 4th batch.
    resumed = LatentLoader(shards, **SETTINGS)
    resumed.load_state_dict(ranks[0]["position"])
    assert [b.keys for b in islice(iter(resumed), 2)] == [b["keys"] for b in expected[3:]]


def test_a_read_error_reaches_the_loop(shards):
    from megatron_moviegen.data.feeder import BatchFeeder

    loader = LatentLoader(shards, **SETTINGS)

    def broken(shard, record):
        raise OSError(f"{shard}: Input/output error")

    loader.read_sample = broken
    feeder = BatchFeeder(loader, prefetch=2)
    with pytest.raises(OSError, match="Input/output error"):
        next(feeder)
    feeder.close()
