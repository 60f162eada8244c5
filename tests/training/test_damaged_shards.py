"""Shards damaged after pre-encoding (cut short, bytes overwritten): at TP=2 the reading rank and the rank waiting
for its broadcast both stop with one error naming the shard and the sample, instead of a decode traceback on one
rank and a hang on the other."""

import json
import shutil

from tests.harness import run_distributed
from tests.training.test_pretrain import TP2_SP, _in_turn, _overrides, _train_expecting_error


def _damage(shards, how):
    for shard in sorted(shards.glob("*.tar")):
        if how == "truncated":
            shard.write_bytes(shard.read_bytes()[:1000])
            continue
        data = bytearray(shard.read_bytes())
        index = json.loads((shards / "index" / f"{shard.name}.json").read_text())
        for record in index["samples"]:
            offset, size = record["members"]["latents.safetensors"]
            data[offset:offset + min(size, 64)] = b"\xff" * min(size, 64)  # the safetensors header
        shard.write_bytes(bytes(data))


def test_a_truncated_or_overwritten_shard_stops_every_rank_naming_shard_and_sample(tiny_shards, tmp_path):
    runs = []
    for how in ("truncated", "overwritten"):
        shards = tmp_path / how
        shutil.copytree(tiny_shards, shards)
        _damage(shards, how)
        runs.append((_train_expecting_error, (_overrides(shards, tmp_path / f"ckpt_{how}", 2, TP2_SP),)))
    for rank in run_distributed(_in_turn, 2, args=(runs,)):
        for message, how in zip(rank, ("truncated", "overwritten")):
            assert message.startswith(f"DamagedShardError: {tmp_path / how}/"), message
            assert "cannot be read" in message and "the shard is damaged" in message, message
