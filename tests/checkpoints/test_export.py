"""The export folder: what a load checks before touching torch.distributed, and how its config is read."""

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
