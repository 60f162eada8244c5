"""FP8 is really on where model.fp8 says so, checked without TransformerEngine (it cannot be installed here).

Stand-ins: the TE spec's linears (tests/models/test_dit_layer_specs.py's fakes) record whether an FP8 context was
active each time they run; `get_fp8_context` is replaced by a context that marks FP8 active; TE's checkpoint by one
that, like TE's, replays the FP8 state of the forward during the recompute. Every block's TE linears must run in FP8
in the forward AND in the recompute of a checkpointed block, for the per-block recipes and for the delayed one;
every module around the blocks must stay bf16; without model.fp8 nothing enters FP8.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from megatron_moviegen.config import ConfigError
from megatron_moviegen.models.fp8 import check_fp8
from tests.harness import run_distributed
from tests.models import test_dit_layer_specs as te_fakes

STATE = {"fp8_depth": 0, "contexts": [], "te_checkpoints": 0, "calls": []}


@contextmanager
def _fake_fp8(active: bool = True):
    STATE["fp8_depth"] += int(active)
    try:
        yield
    finally:
        STATE["fp8_depth"] -= int(active)


def fake_get_fp8_context(config, layer_no: int = -1, is_init: bool = False):
    STATE["contexts"].append(layer_no)
    return _fake_fp8()


def fake_te_checkpoint(function, distribute_saved_activations, get_rng_state_tracker, tp_group, *args):
    """As TE's checkpoint: the recompute runs under the FP8 state the forward ran under."""
    STATE["te_checkpoints"] += 1
    active = STATE["fp8_depth"] > 0

    def replay(*inputs):
        with _fake_fp8(active and STATE["fp8_depth"] == 0):
            return function(*inputs)

    return checkpoint(replay, *args, use_reentrant=False)


def _recording(cls):
    class Recording(cls):
        def forward(self, *args, **kwargs):
            STATE["calls"].append((type(self).__name__, STATE["fp8_depth"] > 0, torch.is_grad_enabled()))
            return super().forward(*args, **kwargs)

    Recording.__name__ = cls.__name__
    return Recording


def _fp8_run(rank, world_size, recipe: str | None, recompute: bool) -> dict:
    """One forward + backward of the tiny DiT built from the TE spec (recording stand-ins), FP8 set as `recipe`."""
    import types

    from megatron_moviegen.models import dit as dit_module
    from megatron_moviegen.models import fp8
    from megatron_moviegen.models.dit import MovieGenDiT, build_transformer_config
    from megatron_moviegen.models.dit_layer_specs import get_dit_layer_te_spec
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed
    from megatron_moviegen.parallel.layout import SequenceLayout
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime
    from tests.parallel.dit_parity import make_microbatches

    module = types.ModuleType(te_fakes.TE_EXTENSION)
    for fake in te_fakes.FAKES:
        setattr(module, fake.__name__, _recording(fake) if "Linear" in fake.__name__ else fake)
    sys.modules[te_fakes.TE_EXTENSION] = module
    fp8.get_fp8_context, fp8.te_checkpoint = fake_get_fp8_context, fake_te_checkpoint
    overrides = ["model.recompute_granularity=full"] if recompute else []
    cfg = load_config("tiny", overrides)
    runtime = Runtime.resolve("bf16")
    init_model_parallel(cfg.parallel, runtime)
    config = build_transformer_config(cfg.model, cfg.parallel, runtime)
    if recipe is not None:  # as build_transformer_config sets it where TE is installed
        config.fp8, config.fp8_recipe = "hybrid", recipe
    set_seed(5, runtime)
    dit = MovieGenDiT(config, cfg.model, get_dit_layer_te_spec(cfg.model.qk_norm), SequenceLayout())
    around = []
    for own in dit.own_modules():
        for sub in own.modules():
            if isinstance(sub, (torch.nn.Linear, torch.nn.Conv3d)):
                sub.register_forward_pre_hook(lambda m, _: around.append(STATE["fp8_depth"] > 0))
    batch = make_microbatches(cfg)[0]
    out = dit(batch["latents"], batch["timesteps"], batch["conditioning"])
    forward_calls = len(STATE["calls"])
    out.float().square().mean().backward()
    destroy()
    assert dit_module.fp8 is fp8
    return {"calls": STATE["calls"], "forward_calls": forward_calls, "contexts": STATE["contexts"],
            "te_checkpoints": STATE["te_checkpoints"], "around": around, "num_layers": cfg.model.num_layers}


# Per block: self-attention qkv and out, cross-attention q, kv and out, MLP fc1 and fc2.
TE_LINEARS_PER_BLOCK = 7


@pytest.mark.parametrize("recipe", ["tensorwise", "delayed"])
def test_every_block_runs_its_te_linears_in_fp8_in_forward_and_recompute(recipe):
    result = run_distributed(_fp8_run, 1, args=(recipe, True))[0]
    layers, calls = result["num_layers"], result["calls"]
    forward, recomputed = calls[:result["forward_calls"]], calls[result["forward_calls"]:]
    assert len(forward) == len(recomputed) == layers * TE_LINEARS_PER_BLOCK  # every block was recomputed
    assert all(in_fp8 for _, in_fp8, _ in forward), f"{recipe}: a block's forward ran outside FP8: {forward}"
    assert all(in_fp8 for _, in_fp8, _ in recomputed), f"{recipe}: a recompute ran outside FP8: {recomputed}"
    assert result["te_checkpoints"] == layers  # TE's checkpoint, not torch's, under FP8
    # The delayed recipe: one context around all blocks (Megatron's layer_no -1); the others: one per block, entered
    # again inside each recompute, by global 0-based layer index (what Megatron's bf16 first/last layers read).
    want = [-1] if recipe == "delayed" else list(range(layers)) + list(reversed(range(layers)))
    assert result["contexts"] == want
    # Patch/time/context embeddings, adaLN and the final projection stay bf16.
    assert result["around"] and not any(result["around"])


def test_without_fp8_nothing_enters_fp8_and_recompute_is_torchs():
    result = run_distributed(_fp8_run, 1, args=(None, True))[0]
    assert result["contexts"] == [] and result["te_checkpoints"] == 0
    assert result["calls"] and not any(in_fp8 for _, in_fp8, _ in result["calls"])


@pytest.mark.parametrize("args,message", [
    (("hybrid", "tensorwise", "local", True, None), "needs TransformerEngine layers"),
    (("hybrid", "tensorwise", "transformer_engine", False, (9, 0)), "train.precision=bf16"),
    (("e4m3", "mxfp8", "transformer_engine", True, (9, 0)), "needs a Blackwell GPU .* compute capability 9.0"),
])
def test_fp8_that_would_silently_not_run_is_refused_by_name(args, message):
    with pytest.raises(ConfigError, match=message):
        check_fp8(*args)


def test_fp8_settings_that_run_are_accepted():
    check_fp8(None, "mxfp8", "local", False, None)  # no FP8: nothing to check
    check_fp8("hybrid", "tensorwise", "transformer_engine", True, (9, 0))  # Hopper
    check_fp8("e4m3", "mxfp8", "transformer_engine", True, (10, 0))  # Blackwell


def test_context_is_padded_with_masked_tokens_to_what_tp_and_fp8_need():
    from types import SimpleNamespace

    from megatron_moviegen.models.dit import pad_context
    from megatron_moviegen.models.fp8 import context_multiple

    # The paper's text: UL2 300 + MetaCLIP 256 + ByT5 100 = 656 tokens; at TP=8 + SP with FP8 each rank's share
    # must be a multiple of 16 rows: 656 -> 768 (96 per rank).
    config = SimpleNamespace(tensor_model_parallel_size=8, sequence_parallel=True, fp8="hybrid", fp8_recipe="tensorwise")
    assert context_multiple(config) == 128
    assert context_multiple(SimpleNamespace(**{**vars(config), "fp8": None})) == 8
    assert context_multiple(SimpleNamespace(**{**vars(config), "fp8_recipe": "mxfp8"})) == 256
    assert context_multiple(SimpleNamespace(**{**vars(config), "sequence_parallel": False})) == 16
    context, real = torch.randn(656, 2, 4), torch.rand(2, 656) > 0.5
    padded, padded_real = pad_context(context, real, 128)
    assert padded.shape == (768, 2, 4) and padded_real.shape == (2, 768)
    assert torch.equal(padded[:656], context) and torch.equal(padded_real[:, :656], real)
    assert not padded_real[:, 656:].any() and not padded[656:].any()
    assert pad_context(context, real, 8)[0] is context  # 656 = 82 x 8: nothing to pad


def test_the_30b_recipe_lays_out_at_tp8_with_sequence_parallelism():
    from megatron_moviegen.recipes import load_config

    cfg = load_config("t2v_30b", ["parallel.tensor_model_parallel_size=8", "parallel.sequence_parallel=true"])
    assert cfg.model.text_encoders["ul2"].max_length % 8 == 4  # UL2's 300 tokens: padded, no longer refused


def test_cp_comm_type_reaches_self_attention_per_layer():
    from types import SimpleNamespace

    from megatron_moviegen.models.dit_layer import cp_comm_type_of_layer

    config = SimpleNamespace(context_parallel_size=2, cp_comm_type="a2a")
    assert cp_comm_type_of_layer(config, 3) == "a2a"
    assert cp_comm_type_of_layer(SimpleNamespace(context_parallel_size=2, cp_comm_type=["p2p", "a2a"]), 2) == "a2a"
    assert cp_comm_type_of_layer(SimpleNamespace(context_parallel_size=1, cp_comm_type="a2a"), 1) is None
