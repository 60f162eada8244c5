"""The shard table finalisation writes: the same bytes however many processes read the indexes, and what it
records of every shard."""

import json
import shutil

import numpy as np

from megatron_moviegen.data.preencode import finalize
from megatron_moviegen.data.shard_table import ShardTable
from tests.data.test_loader import LAYOUT, synthetic_shards

OUTPUTS = ("index/table.json", "index/table-shards.bin", "index/table-buckets.bin", "rejects.jsonl", "summary.json")


def test_finalisation_in_worker_processes_writes_the_same_files(tmp_path):
    (tmp_path / "one").mkdir()
    synthetic_shards(tmp_path / "one")  # finalised with one process
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    finalize(tmp_path / "two", 9, workers=2, energon_index=False)
    for name in OUTPUTS:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_the_table_holds_each_samples_bucket_in_shard_and_index_order(tmp_path):
    synthetic_shards(tmp_path)
    table = ShardTable.read(tmp_path / "index")
    buckets = [table.bucket_names[b] for b in table.buckets]
    expected = [bucket for bucket, _, count in LAYOUT for _ in range(count)]  # keys in manifest order, 8 a shard
    assert buckets == expected and table.num_shards == 9
    assert table.shards["first_key"].tolist() == list(range(0, 72, 8))
    assert dict(zip(table.bucket_names, table.bucket_is_image)) == {b: f == 1 for b, f, _ in LAYOUT}
    starts, counts = table.bounds(np.array([8, 0]))
    assert starts.tolist() == [64, 0] and counts.tolist() == [8, 8]
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 72
