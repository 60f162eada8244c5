"""The export folder: what a load checks before touching torch.distributed, how its config is read, its files
and index, loads that read only a rank's TP slice, and that
weights of another model shape are refused."""

import json
import resource
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from megatron_moviegen.config import to_yaml
from megatron_moviegen.recipes import load_config
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.checkpoints.export import (
    check_export_folder,
    export_dit,
    load_exported_dit,
    parse_byte_size,
    plan_shards,
    read_export_tensors,
    read_exported_config,
    read_weight_map,
)
from megatron_moviegen.checkpoints.tp_shards import shard_tensor, tp_partition_dim
from tests.harness import run_distributed


def test_missing_folder_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_export_folder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="has no config.yaml and no model.safetensors.index.json"):
        check_export_folder(tmp_path)


def test_exported_layout_is_ignored_and_overrides_choose_the_layout(tmp_path):
    trained = load_config("tiny", ["parallel.tensor_model_parallel_size=4", "parallel.pipeline_model_parallel_size=2"])
    (tmp_path / "config.yaml").write_text(to_yaml(trained))
    (tmp_path / "model.safetensors").write_bytes(b"")
    cfg = read_exported_config(tmp_path)
    assert (cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size) == (1, 1)
    assert cfg.model == trained.model
    cfg = read_exported_config(tmp_path, ["parallel.context_parallel_size=2"])
    assert cfg.parallel.context_parallel_size == 2
    with pytest.raises(ConfigError, match="tensor_model_parallel_size: 3 does not divide model.num_attention_heads"):
        read_exported_config(tmp_path, ["parallel.tensor_model_parallel_size=3"])


def test_byte_sizes_parse_and_bad_ones_are_named():
    assert parse_byte_size("5GB") == 5 * 10**9 and parse_byte_size("2GiB") == 2 * 2**30
    assert parse_byte_size("1000") == 1000 and parse_byte_size("1.5 MB") == 1_500_000
    with pytest.raises(ValueError, match="got '5 parsecs', expected a positive number of bytes"):
        parse_byte_size("5 parsecs")


def test_shards_group_consecutive_tensors_up_to_the_limit():
    sizes = [("a", 40), ("b", 40), ("c", 30), ("d", 150), ("e", 10)]
    assert plan_shards(sizes, 100) == [["a", "b"], ["c"], ["d"], ["e"]]  # d alone exceeds the limit


def _export_jobs(rank, world_size, root):
    """One process: the tiny DiT exported in small bf16 files, in float32, re-exported with bigger files, and
    loaded back from a pre-index single-file export."""
    from safetensors.torch import save_file

    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.checkpoints.tp_shards import gather_full_tensors
    from tests.inference.jobs import make_tiny_export

    root = Path(root)
    make_tiny_export(root / "fp32", dtype=torch.float32)
    cfg, chunks = load_exported_dit(root / "fp32")
    weights = gather_full_tensors(chunks[0], dict(chunks[0].named_parameters()))
    export_dit(chunks, root / "bf16", max_shard_bytes=200_000)
    listing_small = sorted(p.name for p in (root / "bf16").iterdir())
    file_bytes = {}  # file -> bytes of each tensor in it
    for name, file in read_weight_map(root / "bf16").items():
        file_bytes.setdefault(file, []).append(read_export_tensors(root / "bf16")[name].nbytes)
    export_dit(chunks, root / "bf16", max_shard_bytes=10**9)  # into the same folder: the small files go
    listing_big = sorted(p.name for p in (root / "bf16").iterdir())
    before = {p.name: p.read_bytes() for p in (root / "bf16").iterdir()}
    import megatron_moviegen.checkpoints.export as export_module
    from unittest import mock

    written = []

    def killed_after_one_file(content, path, metadata=None):  # a kill -9 mid re-export, as an exception
        if written:
            raise KeyboardInterrupt("killed while writing the second file")
        written.append(save_file(content, path, metadata=metadata))

    with mock.patch.object(export_module, "save_file", killed_after_one_file), pytest.raises(KeyboardInterrupt):
        export_dit(chunks, root / "bf16", max_shard_bytes=200_000)
    after_kill = {p.name: p.read_bytes() for p in (root / "bf16").iterdir()}
    left_beside = sorted(p.name for p in root.iterdir())
    staging_is_export = (root / ".bf16.staging" / "model.safetensors.index.json").exists()
    (root / "legacy").mkdir()
    (root / "legacy" / "config.yaml").write_text((root / "fp32" / "config.yaml").read_text())
    save_file(read_export_tensors(root / "fp32"), str(root / "legacy" / "model.safetensors"))
    destroy()
    _, legacy = load_exported_dit(root / "legacy")
    from_legacy = gather_full_tensors(legacy[0], dict(legacy[0].named_parameters()))
    destroy()
    return {"weights": weights, "listing_small": listing_small, "file_bytes": file_bytes, "listing_big": listing_big,
            "kept": before == after_kill, "left_beside": left_beside, "staging_is_export": staging_is_export,
            "from_legacy": from_legacy, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return root, run_distributed(_export_jobs, 1, args=(str(root),))[0]


def test_index_maps_every_tensor_to_the_file_holding_it_and_counts_its_bytes(exports):
    root, result = exports
    index = json.loads((root / "fp32" / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    weight_map = index["weight_map"]
    assert set(weight_map) == set(result["weights"])
    total = 0
    for file in set(weight_map.values()):
        with safe_open(str(root / "fp32" / file), framework="pt") as handle:
            assert sorted(handle.keys()) == sorted(k for k, f in weight_map.items() if f == file)
            total += sum(handle.get_tensor(k).numel() * 4 for k in handle.keys())
    assert index["metadata"]["total_size"] == total == 4 * sum(w.numel() for w in result["weights"].values())


def test_float32_export_is_exact_and_bf16_is_the_default(exports):
    root, result = exports
    assert {k: torch.equal(v, result["weights"][k]) for k, v in read_export_tensors(root / "fp32").items()} == \
        {k: True for k in result["weights"]}
    for name, tensor in read_export_tensors(root / "bf16").items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, result["weights"][name].bfloat16()), name


def test_files_stay_under_the_size_limit_and_a_new_export_removes_the_old_files(exports):
    root, result = exports
    small = [n for n in result["listing_small"] if n.endswith(".safetensors")]
    assert small == [f"model-{i:05d}-of-{len(small):05d}.safetensors" for i in range(1, len(small) + 1)]
    assert len(small) >= 3 and sorted(result["file_bytes"]) == small
    for sizes in result["file_bytes"].values():
        assert sum(sizes) <= 200_000 or len(sizes) == 1, sizes
    assert result["listing_big"] == ["config.yaml", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]


def test_a_re_export_killed_midway_leaves_the_previous_export_byte_identical(exports):
    """A re-export into an existing folder once unlinked its index first, so a kill -9 midway lost the export; now it
    writes into a hidden staging folder that is swapped in only when whole."""
    _, result = exports
    assert result["kept"]  # every file of the earlier export, byte for byte, and no other file
    assert ".bf16.staging" in result["left_beside"] and not result["staging_is_export"]  # hidden, and no index
    assert [n for n in result["left_beside"] if not n.startswith(".")] == ["bf16", "fp32"]


def test_single_file_exports_from_before_the_index_still_load(exports):
    _, result = exports
    assert result["from_legacy"].keys() == result["weights"].keys()
    for name, tensor in result["from_legacy"].items():
        assert torch.equal(tensor, result["weights"][name]), name


def _tp2_load_reads_only_its_slices(rank, world_size, folder):
    from megatron_moviegen.checkpoints import export
    from megatron_moviegen.parallel.initialize import destroy

    read = {}  # tensor name -> elements read from disk

    class RecordingSlice:
        def __init__(self, stored, name):
            self.stored, self.name = stored, name

        def get_shape(self):
            return self.stored.get_shape()

        def __getitem__(self, index):
            piece = self.stored[index]
            read[self.name] = read.get(self.name, 0) + piece.numel()
            return piece

    class RecordingFile:
        def __init__(self, path, framework):
            self.handle = safe_open(path, framework=framework)

        def get_slice(self, name):
            return RecordingSlice(self.handle.get_slice(name), name)

    export.safe_open = RecordingFile
    _, chunks = load_exported_dit(folder, ["parallel.tensor_model_parallel_size=2"])
    local = {name: param.detach().clone() for name, param in chunks[0].named_parameters()}
    partition = {name: tp_partition_dim(param) for name, param in chunks[0].named_parameters()}
    destroy()
    return {"local": local, "partition": partition, "read": read}


def test_a_tp_rank_reads_only_its_slice_of_each_tensor(exports):
    root, result = exports
    ranks = run_distributed(_tp2_load_reads_only_its_slices, 2, args=(root / "fp32",))
    full = result["weights"]
    for rank, got in enumerate(ranks):
        assert got["read"] == {name: t.numel() for name, t in got["local"].items()}  # no more read than kept
        for name, tensor in got["local"].items():
            assert torch.equal(tensor, shard_tensor(name, full[name], got["partition"][name], rank, 2, swiglu=True)), name
    split = [n for n, d in ranks[0]["partition"].items() if d is not None]
    assert "layers.0.mlp.linear_fc1.weight" in split
    assert all(ranks[0]["read"][n] * 2 == full[n].numel() for n in split)
def _export_load_job(rank, world_size, root):
    """A 4-layer and a 2-layer tiny export; loads that must be refused return their messages."""
    from safetensors.torch import save_file

    from megatron_moviegen.checkpoints.export import load_exported_dit
    from megatron_moviegen.checkpoints.tp_shards import ShapeMismatch
    from megatron_moviegen.parallel.initialize import destroy
    from tests.inference.jobs import make_tiny_export

    root = Path(root)
    make_tiny_export(root / "four")
    destroy()

    def load(folder, overrides=()):
        try:
            load_exported_dit(folder, list(overrides))
            return "loaded"
        except ShapeMismatch as exc:
            return str(exc)
        finally:
            destroy()

    messages = {"same": load(root / "four"), "fewer layers": load(root / "four", ["model.num_layers=2"])}
    weights = read_export_tensors(root / "four")
    (root / "two").mkdir()
    (root / "two" / "config.yaml").write_text((root / "four" / "config.yaml").read_text())
    save_file({k: v for k, v in weights.items() if not k.startswith(("layers.2.", "layers.3."))},
              str(root / "two" / "model.safetensors"))
    messages["weights of a smaller model"] = load(root / "two")
    messages["narrower"] = load(root / "four", ["model.hidden_size=32", "model.ffn_hidden_size=64"])
    return messages


@pytest.fixture(scope="module")
def export_loads(tmp_path_factory):
    from tests.harness import run_distributed

    root = tmp_path_factory.mktemp("exports")
    return root, run_distributed(_export_load_job, world_size=1, args=(str(root),))[0]


def test_export_of_another_model_shape_is_refused_naming_tensor_and_shapes(export_loads):
    root, messages = export_loads
    assert messages["same"] == "loaded"
    assert str(root / "four") in messages["fewer layers"]
    assert ("tensor 'layers.2.cross_attention.linear_kv.weight' is not in the model of config.yaml plus overrides "
            "(26 tensors would be dropped); the weights are another model's or an override shrank the model"
            ) in messages["fewer layers"]
    assert "has no tensor 'layers.2." in messages["weights of a smaller model"]
    assert "this model needs it with shape" in messages["weights of a smaller model"]
    assert messages["narrower"] == "tensor 'patch_embed.proj.weight' is (64, 16, 1, 2, 2) in the export but " \
                                   "(32, 16, 1, 2, 2) in this model"
