"""Model averaging of export folders (Movie Gen SFT)."""

import pytest
import torch
from safetensors.torch import save_file

from megatron_moviegen.checkpoints.averaging import average_exports
from megatron_moviegen.checkpoints.export import CONFIG_NAME, INDEX_NAME, SINGLE_FILE_NAME, read_export_tensors
from megatron_moviegen.config import to_yaml
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.recipes import MovieGenConfig, load_config


def _export(folder, seed, overrides=(), tensors=None):
    cfg = load_config("tiny", list(overrides))
    folder.mkdir(parents=True)
    (folder / CONFIG_NAME).write_text(to_yaml(MovieGenConfig(name=f"run{seed}", model=cfg.model)))
    generator = torch.Generator().manual_seed(seed)
    tensors = tensors or {"layers.0.mlp.weight": torch.randn(8, 4, generator=generator),
                          "position_embedding.h": torch.randn(16, 64, generator=generator)}
    save_file(tensors, str(folder / SINGLE_FILE_NAME))  # a single-file export: inputs of either format are read
    return folder


def test_average_of_two_exports_is_the_elementwise_mean(tmp_path):
    a, b = _export(tmp_path / "a", 1), _export(tmp_path / "b", 2)
    out = average_exports([a, b], tmp_path / "avg")
    got, ta, tb = (read_export_tensors(f) for f in (out, a, b))
    assert set(got) == set(ta)
    for name in ta:
        assert torch.allclose(got[name], (ta[name] + tb[name]) / 2, atol=1e-7)
    weighted = read_export_tensors(average_exports([a, b], tmp_path / "w", [0.25, 0.75]))
    assert torch.allclose(weighted["position_embedding.h"],
                          0.25 * ta["position_embedding.h"] + 0.75 * tb["position_embedding.h"], atol=1e-6)
    assert (out / CONFIG_NAME).read_text().count("num_layers: 4") == 1
    # The export format (files + index), and no temporary left behind.
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_NAME, "model-00001-of-00001.safetensors", INDEX_NAME]


def test_models_of_different_configs_are_refused_naming_the_field(tmp_path):
    a, b = _export(tmp_path / "a", 1), _export(tmp_path / "b", 2, ["model.num_layers=2"])
    with pytest.raises(ConfigError, match="model.num_layers: .* has 4 but .* has 2"):
        average_exports([a, b], tmp_path / "avg")
    assert not (tmp_path / "avg").exists()


def test_a_tensor_of_another_shape_is_refused_naming_it(tmp_path):
    a = _export(tmp_path / "a", 1)
    b = _export(tmp_path / "b", 2, tensors={"layers.0.mlp.weight": torch.zeros(8, 4),
                                            "position_embedding.h": torch.zeros(21, 64)})
    with pytest.raises(ValueError, match=r"tensor position_embedding.h: .* \(16, 64\) .* \(21, 64\)"):
        average_exports([a, b], tmp_path / "avg")
    c = _export(tmp_path / "c", 3, tensors={"layers.0.mlp.weight": torch.zeros(8, 4)})
    with pytest.raises(ValueError, match=r"missing \['position_embedding.h'\]"):
        average_exports([a, c], tmp_path / "avg")


def test_the_tool_averages_export_folders(tmp_path, capsys):
    from tools.average_checkpoints import main

    a, b = _export(tmp_path / "a", 1), _export(tmp_path / "b", 2)
    assert main(["--out", str(tmp_path / "avg"), str(a), str(b)]) == 0
    assert "averaged 2 models" in capsys.readouterr().out
    assert (tmp_path / "avg" / INDEX_NAME).is_file()
