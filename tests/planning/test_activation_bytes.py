"""The planner's activation bytes per block (planning/memory.py) against what autograd saves in one tiny bf16 block,
summed with torch.autograd.graph.saved_tensors_hooks (each storage once, parameters left out)."""

import pytest
import torch

from megatron_moviegen.planning.memory import block_activations
from tests.harness import run_distributed

TOKENS, TEXT_TOKENS = 1024, 16


def _saved_bytes_per_token_dim(rank: int, world_size: int, overrides: list[str]) -> dict:
    from megatron.core.transformer.spec_utils import build_module

    from megatron_moviegen.models.dit import build_transformer_config
    from megatron_moviegen.models.dit_layer_specs import get_dit_layer_local_spec
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime

    cfg = load_config("tiny", ["model.num_layers=1", *overrides])
    runtime = Runtime.resolve("bf16", "local", distributed_optimizer=False, cuda=False)
    init_model_parallel(cfg.parallel, runtime)
    config = build_transformer_config(cfg.model, cfg.parallel, runtime)
    layer = build_module(get_dit_layer_local_spec(cfg.model.qk_norm), config=config, layer_number=1)
    d, dtype = cfg.model.hidden_size, torch.bfloat16
    split = world_size if cfg.parallel.sequence_parallel else 1  # video and text tokens are both SP-split
    local_tokens = TOKENS // split
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(local_tokens, 1, d, generator=generator).to(dtype).requires_grad_()
    modulation = torch.randn(1, 6, d, generator=generator).to(dtype)
    context = torch.randn(TEXT_TOKENS // split, 1, d, generator=generator).to(dtype)
    context_mask = torch.zeros(1, 1, 1, TEXT_TOKENS, dtype=torch.bool)
    context_mask[..., TEXT_TOKENS // 2:] = True  # padded text
    position = torch.randn(local_tokens, 1, d, generator=generator).to(dtype)

    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = layer(hidden, modulation, context, context_mask, position)
    out.float().square().mean().backward()  # the saved tensors are the ones backward needs
    destroy()
    # per token of the whole sequence and hidden unit
    return {"bytes": sum(saved.values()) / (TOKENS * d), "finite": bool(torch.isfinite(hidden.grad).all())}


def _ignored_bytes(model, tp: int = 1) -> float:
    """What the formula leaves out, per token and hidden unit, on one of tp ranks: float32 per-token statistics
    (3 norms' rsqrt; per head the QK norms' rsqrt and both softmaxes' log-sum-exp) and the text tokens' tensors
    (context, k, v)."""
    heads = model.num_attention_heads
    return ((3 + 4 * heads) * 4 / model.hidden_size + 3 * 2 * TEXT_TOKENS / TOKENS) / tp


@pytest.mark.parametrize("overrides", [[], ["model.gated_mlp=false"], ["model.qk_norm=false"]],
                         ids=["swiglu_qknorm", "gelu", "no_qknorm"])
def test_a_blocks_saved_activations_match_the_planners_formula(overrides):
    from megatron_moviegen.recipes import load_config

    model = load_config("tiny", overrides).model
    measured = run_distributed(_saved_bytes_per_token_dim, world_size=1, args=(overrides,))[0]
    assert measured["finite"]
    expected = block_activations(model, "local").per_rank(1, False)
    ignored = _ignored_bytes(model)
    assert expected <= measured["bytes"] <= expected + ignored + 0.05, (measured["bytes"], expected, ignored)


def test_sequence_parallelism_splits_every_saved_activation_over_tp():
    overrides = ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"]
    from megatron_moviegen.recipes import load_config

    model = load_config("tiny", overrides).model
    per_rank = run_distributed(_saved_bytes_per_token_dim, world_size=2, args=(overrides,))
    expected = block_activations(model, "local").per_rank(2, True)  # the whole block's / 2
    ignored = _ignored_bytes(model, tp=2)
    for measured in per_rank:
        assert expected <= measured["bytes"] <= expected + ignored + 0.05, (measured["bytes"], expected, ignored)


def test_the_30b_block_keeps_about_fifty_hidden_state_copies():
    from megatron_moviegen.recipes import load_config

    model = load_config("t2v_30b").model
    assert block_activations(model, "local").per_rank(1, False) / 2 == pytest.approx(36 + 5 * 16384 / 6144)
    assert block_activations(model, "transformer_engine").per_rank(1, False) / 2 == pytest.approx(21 + 5 * 16384 / 6144)
