import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.data.loader import LatentLoader
from megatron_moviegen.data.preencode import finalize
from megatron_moviegen.conditioning import Conditioning, Tokens
from megatron_moviegen.data.shard_table import records_sha256
from megatron_moviegen.data.shards import EncodedSample, ShardIndex, sample_key, write_shard

READ = ShardIndex.read

# (bucket, latent frames, count): two video buckets and one image bucket.
LAYOUT = [("32x16x16", 4, 24), ("64x16x32", 8, 18), ("1x16x16", 1, 30)]


def synthetic_shards(out: Path, shard_size: int = 8) -> int:
    """Shards of small fake samples whose latents encode their key, so reads can be checked exactly."""
    samples = []
    for bucket, frames, count in LAYOUT:
        for _ in range(count):
            index = len(samples)
            h, w = (int(x) // 8 for x in bucket.split("x")[1:])
            samples.append(EncodedSample(
                key=sample_key(index),
                latents=torch.full((16, frames, h, w), float(index)),
                conditioning=Conditioning({"ul2": Tokens(torch.full((3, 4), float(index)),
                                                         torch.tensor([True, True, False]))}),
                meta={"bucket": bucket, "is_image": frames == 1, "fps": 0.0 if frames == 1 else 24.0,
                      "prompt_fps": None if frames == 1 else 24,
                      "num_frames": int(bucket.split("x")[0]), "caption": f"sample {index}"}))
    shards = [samples[i : i + shard_size] for i in range(0, len(samples), shard_size)]
    for k, chunk in enumerate(shards):
        write_shard(out, k, chunk, [], torch.float32)
    finalize(out, len(shards))
    return len(samples)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthetic_shards(out)
    return out


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_batches_hold_one_bucket_and_the_right_samples(shards):
    for batch in take(LatentLoader(shards, batch_size=3, image_fraction=0.3, seed=0), 12):
        assert len({int(k) for k in batch.keys}) == 3
        bucket = [b for b in LAYOUT if b[0] == batch.bucket][0]
        assert batch.latents.shape[:3] == (3, 16, bucket[1])
        assert batch.latents[:, 0, 0, 0, 0].tolist() == [float(k) for k in batch.keys]  # read the right bytes
        ul2 = batch.conditioning.tokens["ul2"]
        assert ul2.embeddings.shape == (3, 3, 4) and ul2.mask[:, 2].tolist() == [False] * 3
        assert batch.is_image == (bucket[1] == 1)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_image_video_ratio(shards, fraction):
    plan = LatentLoader(shards, batch_size=2, image_fraction=fraction, seed=1).epoch_plan(0)
    kinds = [refs[0][1]["is_image"] for refs in plan]
    for k in range(1, len(kinds) + 1):
        assert sum(kinds[:k]) == int(k * fraction)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_the_interleave_computed_in_chunks_is_the_whole_one(shards, fraction):
    """The planner interleaves image and video batches a chunk at a time (O(chunk) memory at 100M samples): every
    chunk size gives the plan of one pass, including where the due kind runs out mid-chunk."""
    loader = LatentLoader(shards, batch_size=2, image_fraction=fraction, seed=1)
    images, videos = np.arange(5, dtype=np.int32), np.arange(5, 17, dtype=np.int32)
    whole = loader._interleave(images, videos, chunk=1 << 16)
    assert 0 < len(whole) < 17  # the images run out before the videos
    for chunk in (1, 2, 3, 7):
        assert loader._interleave(images, videos, chunk=chunk).tolist() == whole.tolist()


def test_same_seed_same_order_other_seed_other_order(shards):
    keys = lambda seed: [b.keys for b in take(LatentLoader(shards, 2, 0.25, seed), 10)]
    assert keys(7) == keys(7)
    assert keys(7) != keys(8)


def test_epochs_cover_every_full_batch_once_then_reshuffle(shards):
    loader = LatentLoader(shards, batch_size=2, image_fraction=0.0, seed=3)
    plan = loader.epoch_plan(0)
    keys = [r[1]["key"] for refs in plan for r in refs]
    assert len(keys) == len(set(keys)) == 24 + 18  # videos only; both buckets divide by 2
    assert plan != loader.epoch_plan(1)


def test_data_parallel_ranks_read_disjoint_shards(shards):
    ranks = [LatentLoader(shards, 1, 0.0, seed=5, dp_rank=r, dp_size=2) for r in range(2)]
    plans = [{r[1]["key"] for refs in loader.epoch_plan(0) for r in refs} for loader in ranks]
    assert not plans[0] & plans[1]
    assert len(plans[0] | plans[1]) == 24 + 18


def test_state_dict_resumes_exactly_across_epochs(shards):
    reference = [b.keys for b in take(LatentLoader(shards, 4, 0.5, seed=11), 40)]  # > 1 epoch
    loader = LatentLoader(shards, 4, 0.5, seed=11)
    first = [b.keys for b in take(loader, 17)]
    state = loader.state_dict()
    resumed = LatentLoader(shards, 4, 0.5, seed=11)
    resumed.load_state_dict(state)
    assert first + [b.keys for b in take(resumed, 23)] == reference
    assert state["epoch"] == 1 and len(loader.epoch_plan(0)) < 17  # the saved position is inside epoch 1


def test_a_batch_schedule_recuts_the_epoch_at_each_change_and_resumes_exactly(shards):
    """Table 3 changes the batch inside a stage: from batch 3 on the loader serves 4 samples (then 1 from batch 17,
    in the second epoch), re-cutting the rest of the epoch without repeating a sample; a resume from any position
    (before, at, after a change, in a later epoch) continues the uninterrupted run."""
    schedule = [(3, 4), (17, 1)]
    make = lambda: LatentLoader(shards, 2, 0.5, seed=11, batch_schedule=schedule)  # noqa: E731
    reference = make()
    batches = take(reference, 30)
    assert [len(b.keys) for b in batches[:6]] == [2, 2, 2, 4, 4, 4] and {len(b.keys) for b in batches[17:]} == {1}
    epoch_of = []
    loader = make()
    for _ in range(30):
        take(loader, 1)
        epoch_of.append(loader.epoch)  # the epoch that batch came from
    first_epoch = [key for b, e in zip(batches, epoch_of) if e == 0 for key in b.keys]
    assert len(first_epoch) == len(set(first_epoch)) and 0 < epoch_of.index(1) < 17  # the change at 17 is in epoch 1
    for stop in (2, 3, 4, epoch_of.index(1), 17, 18, 25):
        loader = make()
        head = take(loader, stop)
        resumed = make()
        resumed.load_state_dict(pickle.loads(pickle.dumps(loader.state_dict())))
        assert [b.keys for b in head + take(resumed, 30 - stop)] == [b.keys for b in batches], stop
    with pytest.raises(ConfigError, match=r"the changes before batch 30 were \[\[3, 4\], \[17, 1\]\] in the saved "
                                          r"run, \[\[3, 4\]\] here"):
        LatentLoader(shards, 2, 0.5, seed=11, batch_schedule=[(3, 4)]).load_state_dict(reference.state_dict())
    early = make()
    take(early, 10)  # before the change at 17: a recipe may move or add later changes
    LatentLoader(shards, 2, 0.5, seed=11, batch_schedule=[(3, 4), (20, 1)]).load_state_dict(early.state_dict())
    old = LatentLoader(shards, 2, 0.5, seed=11)  # a run saved before batch schedules, in its second epoch
    take(old, 40)
    state = {k: v for k, v in old.state_dict().items() if k not in ("consumed", "epoch_start", "batch_schedule")}
    later = LatentLoader(shards, 2, 0.5, seed=11, batch_schedule=[(45, 4)])
    later.load_state_dict(state)  # its position counted from the epochs' plans: the change lands at batch 45
    assert (later.consumed, later.epoch) == (40, 1) and [len(b.keys) for b in take(later, 6)] == [2] * 5 + [4]


def test_state_from_other_settings_is_refused(shards):
    state = LatentLoader(shards, 4, 0.5, seed=11).state_dict()
    with pytest.raises(ConfigError, match="seed"):
        LatentLoader(shards, 4, 0.5, seed=12).load_state_dict(state)


@pytest.fixture(scope="module")
def resharded(tmp_path_factory) -> Path:
    """The same samples cut into shards of 6: shards 0-8 rewritten (8 -> 6 samples), shards 9-11 added."""
    out = tmp_path_factory.mktemp("resharded")
    synthetic_shards(out, shard_size=6)
    return out


def test_a_resume_onto_a_changed_shard_index_is_refused_naming_the_change(shards, resharded):
    loader = LatentLoader(shards, 4, 0.5, seed=11)
    take(loader, 5)
    with pytest.raises(ConfigError) as refused:
        LatentLoader(resharded, 4, 0.5, seed=11).load_state_dict(loader.state_dict())
    message = str(refused.value)
    assert re.match(rf"data.shards {resharded}: the shard index changed since the checkpoint: 9 -> 12 shards, "
                    r"72 -> 72 samples, index sha256 [0-9a-f]{12} -> [0-9a-f]{12};", message), message
    assert "data.allow_changed_shards=true" in message


def test_a_shard_rewritten_with_the_same_count_is_a_change_and_an_unchanged_copy_is_not(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    state = LatentLoader(shards, 4, 0.5, seed=11).state_dict()
    LatentLoader(copy, 4, 0.5, seed=11).load_state_dict(state)  # another folder, the same index: resumes
    index = copy / "index" / "shard-000002.tar.json"
    record = json.loads(index.read_text())
    record["samples"][0]["key"], record["samples"][1]["key"] = record["samples"][1]["key"], record["samples"][0]["key"]
    index.write_text(json.dumps(record))
    finalize(copy, 9)  # as pre-encoding does after rewriting a shard
    with pytest.raises(ConfigError, match=r"9 -> 9 shards, 72 -> 72 samples, index sha256 (\w{12}) -> (?!\1)"):
        LatentLoader(copy, 4, 0.5, seed=11).load_state_dict(state)


def test_allow_changed_shards_warns_and_goes_on_from_the_saved_position(shards, resharded, caplog):
    loader = LatentLoader(shards, 4, 0.5, seed=11)
    take(loader, 5)
    resumed = LatentLoader(resharded, 4, 0.5, seed=11, allow_changed_shards=True)
    with caplog.at_level(logging.WARNING, logger="megatron_moviegen.data"):
        resumed.load_state_dict(loader.state_dict())
    assert "9 -> 12 shards" in caplog.text and "going on at epoch 0, batch 5" in caplog.text
    assert (resumed.epoch, resumed.step) == (0, 5)
    assert [b.keys for b in take(resumed, 3)] == [[r["key"] for _, r in refs] for refs in resumed.epoch_plan(0)[5:8]]


def test_a_loader_state_saved_before_fingerprints_resumes_on_the_same_shard_names(shards):
    state = LatentLoader(shards, 4, 0.5, seed=11).state_dict()
    old = {**{k: v for k, v in state.items() if k != "dataset"}, "shards": [f"shard-{k:06d}.tar" for k in range(9)]}
    LatentLoader(shards, 4, 0.5, seed=11).load_state_dict(old)
    with pytest.raises(ConfigError, match=r"1 shard\(s\) removed \(shard-000099.tar\)"):
        LatentLoader(shards, 4, 0.5, seed=11).load_state_dict({**old, "shards": old["shards"] + ["shard-000099.tar"]})


def test_a_loader_state_with_per_shard_fingerprints_resumes_and_its_changes_are_refused(shards, resharded):
    """States saved before the O(1) identity held {"index": {shard: {"samples", "sha256"}}} (26+ bytes a shard)."""
    def old_state(folder):
        state = LatentLoader(folder, 4, 0.5, seed=11).state_dict()
        del state["dataset"]
        records = {p.name[:-len(".json")]: json.loads(p.read_text())["samples"]
                   for p in (folder / "index").glob("*.tar.json")}
        return {**state, "step": 3, "index": {name: {"samples": len(r), "sha256": records_sha256(r)}
                                              for name, r in records.items()}}
    loader = LatentLoader(shards, 4, 0.5, seed=11)
    loader.load_state_dict(old_state(shards))
    assert (loader.epoch, loader.step) == (0, 3)
    with pytest.raises(ConfigError, match=r"12 -> 9 shards, 72 -> 72 samples"):
        loader.load_state_dict(old_state(resharded))


def test_the_state_is_under_1_kb_and_a_never_iterated_loader_reads_no_shard_index(shards, monkeypatch):
    read = []
    monkeypatch.setattr(ShardIndex, "read", classmethod(lambda cls, path: read.append(path.name) or READ(path)))
    loader = LatentLoader(shards, 4, 0.5, seed=11, dp_rank=1, dp_size=3)  # as on a TP peer of the reading rank
    loader.load_state_dict(loader.state_dict())
    assert len(pickle.dumps(loader.state_dict())) < 1024 and loader.prompt_fps() == [24] and read == []


def test_a_rank_reads_the_indexes_of_its_own_shards_only(shards, monkeypatch):
    read = []
    monkeypatch.setattr(ShardIndex, "read", classmethod(lambda cls, path: read.append(path.name) or READ(path)))
    loader = LatentLoader(shards, 1, 0.5, seed=11, dp_rank=1, dp_size=3)
    plan = loader.epoch_plan(0)
    assert read == []  # planned from the shard table
    mine = {shard for refs in plan for shard, _ in refs}
    assert {name[:-len(".json")] for name in read} == mine and len(mine) == 3  # 9 shards over 3 ranks


def test_plans_are_those_of_the_loader_before_the_shard_table(shards):
    """Keys the loader that held every index record gave for these shards and settings (a resumed run keeps its
    data order across the upgrade)."""
    loader = iter(LatentLoader(shards, 2, 0.5, seed=4, dp_rank=1, dp_size=2))
    assert [next(loader).keys for _ in range(12)] == [
        ["000000008", "000000021"], ["000000071", "000000069"], ["000000023", "000000014"], ["000000064", "000000070"],
        ["000000022", "000000019"], ["000000065", "000000067"], ["000000017", "000000020"], ["000000066", "000000068"],
        ["000000025", "000000029"], ["000000027", "000000031"], ["000000008", "000000004"], ["000000051", "000000047"]]


def test_shards_finalised_before_the_shard_table_load_with_the_same_plan(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    for name in ("table.json", "table-shards.bin", "table-buckets.bin"):
        (copy / "index" / name).unlink()
    old, new = LatentLoader(copy, 2, 0.5, seed=4), LatentLoader(shards, 2, 0.5, seed=4)
    assert old.epoch_plan(0) == new.epoch_plan(0) and old.state_dict() == new.state_dict()


def test_a_shard_rewritten_after_finalisation_is_an_error_naming_it(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    index = copy / "index" / "shard-000000.tar.json"
    record = json.loads(index.read_text())
    index.write_text(json.dumps({**record, "samples": record["samples"][:-1]}))
    loader = LatentLoader(copy, 1, 0.0, seed=0)
    with pytest.raises(ConfigError, match=r"shard-000000.tar.json: 7 samples, the shard table .* says 8"):
        list(loader.records()) and [loader.read_batch(refs) for refs in loader.epoch_plan(0)]


def test_more_ranks_than_shards_is_an_error(shards):
    with pytest.raises(ConfigError, match="cannot be split over 100"):
        LatentLoader(shards, 1, 0.0, seed=0, dp_rank=0, dp_size=100)


def test_sample_names_find_any_shards_key_from_the_table(shards):
    loader = LatentLoader(shards, 1, 0.0, seed=0, dp_rank=1, dp_size=3)  # names keys of every rank's shards
    assert loader.sample_names(["000000013", "000000071", "000000000"]) == [
        "shard-000001.tar/000000013 (?)", "shard-000008.tar/000000071 (?)", "shard-000000.tar/000000000 (?)"]
