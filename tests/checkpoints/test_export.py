"""The export folder: what a load checks before touching torch.distributed, how its config is read, and that
weights of another model shape are refused."""

from pathlib import Path

import pytest

from megatron_moviegen.config import to_yaml
from megatron_moviegen.recipes import load_config
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.checkpoints.export import check_export_folder, read_exported_config


def test_missing_folder_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_export_folder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="has no config.yaml and no model.safetensors"):
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


def _export_load_job(rank, world_size, root):
    """A 4-layer and a 2-layer tiny export; loads that must be refused return their messages."""
    from safetensors.torch import load_file, save_file

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
    weights = load_file(str(root / "four" / "model.safetensors"))
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
    assert messages["fewer layers"] == (
        f"{root / 'four' / 'model.safetensors'}: tensor 'layers.2.cross_attention.linear_kv.weight' (128, 64) is not "
        "in the model of config.yaml plus overrides (26 tensors would be dropped); the weights are another model's "
        "or an override shrank the model")
    assert messages["weights of a smaller model"].startswith("checkpoint has no tensor 'layers.2.")
    assert "this model needs it with shape" in messages["weights of a smaller model"]
    assert messages["narrower"] == "tensor 'patch_embed.proj.weight' is (64, 16, 1, 2, 2) in the checkpoint but " \
                                   "(32, 16, 1, 2, 2) in this model"
