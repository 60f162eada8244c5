"""The kind registry: every recipe's kind, the inference old recipes and exports rely on, the refusals, a kind
registered from outside the package, and no branch on a kind's data section outside megatron_moviegen/kinds/."""

import ast
import re
from pathlib import Path

import pytest

from megatron_moviegen import generate, kinds
from megatron_moviegen.checkpoints.export import read_exported_config
from megatron_moviegen.config import to_yaml
from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.kinds import Kind, get, infer, kind_of, register
from megatron_moviegen.kinds.evaluating import main as evaluate_main
from megatron_moviegen.recipes import available_recipes, load_config

REPO = Path(__file__).resolve().parents[1]
RECIPE_KINDS = {
    "audio_13b": "audio", "audio_tiny": "audio", "edit_image": "edit", "edit_tiny": "edit", "edit_video": "edit",
    "pt2v": "personalize", "pt2v_sft": "personalize", "pt2v_stage1": "personalize", "pt2v_stage2": "personalize",
    "pt2v_stage3": "personalize", "pt2v_tiny": "personalize", "pt2v_tiny_trainable": "personalize",
    "quickstart": "t2v", "sft": "t2v", "t2i_1024_7b": "t2v", "t2i_256": "t2v", "t2iv_256": "t2v", "t2iv_768": "t2v",
    "t2v_30b": "t2v", "tiny": "t2v", "upsampler_7b": "upsample", "upsampler_tiny": "upsample",
}
SECTIONS = {"audio", "edit", "upsample", "reference"}
# Files that still branch on a kind's data section, not yet behind the registry (docs/kinds.md): pre-encoding and its
# tool build each kind's conditions, DataConfig.validate says which sections combine, and evaluation's loaders refuse
# a recipe without the section they read.
KNOWN_REMAINDER = {"megatron_moviegen/data/preencode.py", "tools/preencode_latents.py",
                   "megatron_moviegen/data/config.py", "megatron_moviegen/evaluation.py"}


def test_every_shipped_recipe_declares_its_kind_and_its_data_section_implies_the_same():
    assert sorted(RECIPE_KINDS) == available_recipes()
    for recipe, expected in RECIPE_KINDS.items():
        cfg = load_config(recipe)
        assert (cfg.kind, kind_of(cfg).name, infer(cfg.data).name) == (expected, expected, expected), recipe


def test_a_recipe_without_kind_is_the_kind_of_its_data_section():
    cfg = load_config("pt2v_tiny", ["kind=null"])
    assert cfg.kind is None and kind_of(cfg) is get("personalize")
    edit = ["model.condition_channels=16", "model.num_tasks=2", "data.edit.default_task=video_edit"]
    assert kind_of(load_config("tiny", edit)).name == "edit"  # a section added to a t2v recipe makes its kind


@pytest.mark.parametrize("recipe, overrides, message", [
    ("tiny", ["kind=audio"], "kind: audio, but data.audio is not set: set kind: t2v, or data.audio$"),
    ("pt2v_tiny", ["kind=edit"], r"kind: edit, but data.edit is not set \(data.reference is\): set kind: personalize"),
    ("edit_tiny", ["kind=personalize"], "kind: personalize, but data.reference is not set \\(data.edit is\\)"),
    ("tiny", ["kind=eidt"], "kind: got 'eidt', need one of .*; did you mean 'edit'\\?"),
])
def test_a_kind_the_data_section_contradicts_or_a_mistyped_kind_is_refused(recipe, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(recipe, overrides)


def test_a_kind_registered_outside_the_package_is_found_checked_and_evaluated(monkeypatch):
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))  # the toy kind leaves with the test
    checked = []
    toy = register(Kind("toy", "a toy kind", None, checked.append, lambda args, cfg: {"toy": cfg.name}))
    assert get("toy") is toy
    with pytest.raises(ConfigError, match="kind: got 'tyo', .*; did you mean 'toy'\\?"):
        get("tyo")
    cfg = load_config("tiny", ["kind=toy"])
    assert kind_of(cfg) is toy and checked == [cfg]
    assert evaluate_main(["--manifest", "m.jsonl", "--config", "tiny", "--tae", "toy-tae", "kind=toy"]) == {"toy": "tiny"}
    with pytest.raises(ConfigError, match="kind: toy, but data.edit is set, which makes it a recipe of kind edit: set kind: edit, or leave out data.edit"):
        load_config("edit_tiny", ["kind=toy"])
    with pytest.raises(ValueError, match="kind 'toy' is already registered"):
        register(toy)
    with pytest.raises(ValueError, match="kind 'toy2': data.edit already marks kind 'edit'"):
        register(Kind("toy2", "another", "edit", checked.append, dict))
    with pytest.raises(ValueError, match="kind 'toy2': section got 'edits', need a field of the data config"):
        register(Kind("toy2", "another", "edits", checked.append, dict))


def test_evaluate_refuses_the_autoencoder_flag_of_another_kind():
    with pytest.raises(SystemExit, match="audio_tiny is a recipe of kind audio: give --audio-ae"):
        evaluate_main(["--manifest", "m.jsonl", "--config", "audio_tiny", "--tae", "toy-tae"])
    with pytest.raises(SystemExit, match="tiny is a recipe of kind t2v: give --tae"):
        evaluate_main(["--manifest", "m.jsonl", "--config", "tiny", "--audio-ae", "ae"])


def _export_config(folder: Path, recipe: str, keep_kind: bool = True) -> Path:
    """An export folder's config.yaml from `recipe` (weights empty: read only up to the config)."""
    folder.mkdir()
    text = to_yaml(load_config(recipe))
    (folder / "config.yaml").write_text(text if keep_kind else re.sub(r"(?m)^kind: .*\n", "", text))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_an_export_written_before_kinds_loads_and_is_the_kind_of_its_data(tmp_path):
    cfg = read_exported_config(_export_config(tmp_path / "old", "edit_tiny", keep_kind=False))
    assert cfg.kind is None and kind_of(cfg).name == "edit"
    assert read_exported_config(_export_config(tmp_path / "new", "pt2v_tiny")).kind == "personalize"


def test_generate_refuses_an_audio_export_naming_generate_audio(tmp_path, capsys):
    folder = _export_config(tmp_path / "audio", "audio_tiny")
    assert generate.main(["--checkpoint", str(folder), "--prompt", "rain", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"generate: error: --checkpoint: {folder} is a model of kind audio") and \
        err.rstrip().endswith("sample it with generate-audio, not generate"), err


def _section_branches(tree: ast.AST) -> list[int]:
    """Lines that test whether a data section is set: `<data|config|self>.<section> is (not) None`, or the section
    itself as a condition (`if data.upsample`)."""
    def section(node, receivers):
        return isinstance(node, ast.Attribute) and node.attr in SECTIONS and \
            re.search(rf"(^|\.)({receivers})$", ast.unparse(node.value))

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Is, ast.IsNot)) \
                and isinstance(node.comparators[0], ast.Constant) and node.comparators[0].value is None:
            lines += [node.lineno] if section(node.left, "data|config|self") else []
        tests = [node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While)) else \
            node.values if isinstance(node, ast.BoolOp) else []
        lines += [t.lineno for t in tests if section(t, "data|config")]
    return sorted(set(lines))


def test_no_branch_on_a_kinds_data_section_outside_the_kinds_and_the_known_remainder():
    files = [*(REPO / "megatron_moviegen").rglob("*.py"), *(REPO / "tools").glob("*.py")]
    branching = {str(p.relative_to(REPO)): _section_branches(ast.parse(p.read_text())) for p in files
                 if (REPO / "megatron_moviegen" / "kinds") not in p.parents}
    assert {name for name, lines in branching.items() if lines} == KNOWN_REMAINDER
    assert _section_branches(ast.parse("if cfg.data.edit is None or data.upsample:\n    pass")) == [1]
