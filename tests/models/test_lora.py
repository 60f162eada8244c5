"""LoRA adapters on the DiT's linears: a new adapter changes nothing, only adapters train, merging keeps the function."""

import pytest
import torch

from megatron_moviegen.config import ConfigError
from megatron_moviegen.models.dit_config import LINEARS, linear_sizes
from megatron_moviegen.recipes import load_config
from tests.checkpoints.test_stages import _save_random_t2v, _t2v_inputs
from tests.harness import run_distributed


def _lora_on_t2v(rank, world_size, old_dir):
    """A T2V checkpoint loaded into the same DiT with rank-4 adapters: outputs before and after the adapters are
    trained (B random), and after they are merged into the weights."""
    from megatron_moviegen.conditioning import Conditioning
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
    from megatron_moviegen.models.lora import is_adapter_name, merge_lora
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.runtime import Runtime

    runtime = Runtime.resolve(distributed_optimizer=False)
    t2v, old = _save_random_t2v(old_dir, runtime)
    lora = build_dit_chunks(load_config("tiny", ["model.lora.rank=4"]), runtime)[0]
    kept = load_weights_for_new_stage(str(old_dir), [lora])
    latents, text, t = _t2v_inputs(t2v, torch.Generator().manual_seed(3))
    run = lambda model: model(latents, t, Conditioning(text))  # noqa: E731
    trainable = {name: p.numel() for name, p in lora.named_parameters() if p.requires_grad}
    with torch.no_grad():
        before, fresh = run(old[0]), run(lora)
        for name, param in lora.named_parameters():
            if name.endswith("_lora.b"):
                param.normal_(0.0, 0.05)  # as if trained
        adapted = run(lora)
        merged_count = merge_lora(lora.layers)
        merged = run(lora)
    left = [name for name, _ in lora.named_parameters() if is_adapter_name(name)]
    destroy()
    return {"before": before, "fresh": fresh, "adapted": adapted, "merged": merged, "trainable": trainable,
            "kept": kept, "merged_count": merged_count, "left": left}


@pytest.fixture(scope="module")
def lora_result(tmp_path_factory):
    return run_distributed(_lora_on_t2v, 1, args=(tmp_path_factory.mktemp("lora") / "t2v",))[0]


def test_new_adapters_on_a_t2v_checkpoint_give_exactly_its_output(lora_result):
    assert torch.equal(lora_result["fresh"], lora_result["before"])  # B starts at zero
    assert lora_result["kept"] == {n for n in lora_result["trainable"]}  # only the adapters are new


def test_only_the_adapters_train_and_their_count_is_the_planned_one(lora_result):
    trainable = lora_result["trainable"]
    assert trainable and all(name.endswith(("_lora.a", "_lora.b")) for name in trainable)
    tiny = load_config("tiny", ["model.lora.rank=4"]).model
    sizes = linear_sizes(tiny.hidden_size, tiny.ffn_hidden_size, tiny.hidden_size, tiny.hidden_size)
    assert sum(trainable.values()) == tiny.lora.num_parameters(sizes, tiny.num_layers)
    assert len(trainable) == tiny.num_layers * len(LINEARS) * 2


def test_merged_adapters_compute_what_the_adapters_did(lora_result):
    assert not torch.allclose(lora_result["adapted"], lora_result["before"], atol=1e-3)  # trained adapters act
    assert torch.allclose(lora_result["merged"], lora_result["adapted"], rtol=1e-5, atol=1e-6)
    assert lora_result["merged_count"] == 4 * len(LINEARS) and lora_result["left"] == []


@pytest.mark.parametrize("override, message", [
    ("model.lora.rank=-1", "model.lora.rank: got -1"),
    ("model.lora.targets=[mlp.linear_fc3]", "unknown linears ['mlp.linear_fc3']"),
])
def test_bad_lora_settings_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config("tiny", [override])
