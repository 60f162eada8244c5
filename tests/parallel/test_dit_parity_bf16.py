"""The production precision: TP2 + SP and CP2 in bf16 compute what one bf16 process computes, to within bf16's own
rounding.

In bf16 the layouts cannot agree bit for bit: TP splits the matmul reductions and reduce-scatters partial sums, CP
gathers keys in another order, and each partial result is rounded to 8 significant bits (unit roundoff
2^-8 = 0.0039). So the tolerance is measured, not guessed: the same weights (bf16 values, exact in float32) are
run once in float32, and a layout may differ from the one-process bf16 run by at most twice what bf16 rounding
alone costs that run against float32 (plus 2^-8 for tensors whose bf16 error is near zero). A layout that drops a
reduction, misplaces a shard or skips a gradient is off by O(1), hundreds of times this bound.
"""

import pytest
import torch

from tests.harness import run_distributed
from tests.parallel.dit_parity import run_step

BF16_ULP = 2.0**-8

LAYOUTS = {
    "tp2_sp": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
    "cp2": ["parallel.context_parallel_size=2", "parallel.cp_comm_type=all_gather"],
}


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-12)).item()


def _bf16_then_float32(rank, world_size):
    bf16 = run_step(rank, world_size, [], None, "tiny", "bf16")
    return bf16, run_step(rank, world_size, [], bf16, "tiny", "fp32")


@pytest.fixture(scope="module")
def references():
    """One process in bf16 (random weights), then the same weights in float32 (one launch)."""
    return run_distributed(_bf16_then_float32, world_size=1)[0]


def test_bf16_reference_is_bf16_and_close_to_float32(references):
    bf16, fp32 = references
    assert all(w.dtype == torch.bfloat16 for w in bf16["weights"].values()), "the bf16 model holds float32 weights"
    assert all(g.dtype == torch.float32 for g in bf16["grads"].values()), "grads are not accumulated in float32"
    for got, want in zip(bf16["outputs"], fp32["outputs"]):
        assert got.dtype == torch.float32  # the loss sees float32
        assert 0 < _relative_error(got, want) < 8 * BF16_ULP  # rounded (so really bf16), but by a few ulps only


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bf16_layout_matches_one_bf16_process_within_bf16_rounding(layout, references):
    bf16, fp32 = references
    results = run_distributed(run_step, world_size=2, args=(LAYOUTS[layout], bf16, "tiny", "bf16"))
    outputs = [r["outputs"] for r in results if r["outputs"] is not None]
    assert outputs
    if layout == "cp2":  # parallel.cp_comm_type reaches self-attention's core (TE would fall back to p2p without it)
        assert [r["cp_comm_type"] for r in results] == ["all_gather", "all_gather"]
    for rank_outputs in outputs:
        for got, want, exact in zip(rank_outputs, bf16["outputs"], fp32["outputs"]):
            bound = 2 * _relative_error(want, exact) + BF16_ULP
            assert _relative_error(got, want) < bound, f"{layout}: output off by more than bf16 rounding ({bound:.2e})"
    grads = {}
    for result in results:
        grads.update(result["grads"])
    assert set(grads) == set(bf16["grads"])
    worst = {}
    for name, grad in grads.items():
        bound = 2 * _relative_error(bf16["grads"][name], fp32["grads"][name]) + BF16_ULP
        error = _relative_error(grad, bf16["grads"][name])
        if error >= bound:
            worst[name] = (error, bound)
    assert not worst, f"{layout}: gradients off by more than bf16 rounding: {worst}"


KINDS = ("conditioned", "lora", "audio")


def _each_kind_in_bf16_and_float32(rank, world_size):
    """Per model kind, in one launch: one bf16 step (random weights), then float32 on the same weights."""
    from tests.parallel.test_dit_parity import CONDITIONS, RECIPES

    results = {}
    for kind in KINDS:
        recipe = RECIPES.get(kind, "tiny")
        bf16 = run_step(rank, world_size, CONDITIONS[kind], None, recipe, "bf16")
        results[kind] = (bf16, run_step(rank, world_size, CONDITIONS[kind], bf16, recipe, "fp32"))
    return results


@pytest.fixture(scope="module")
def model_kinds():
    return run_distributed(_each_kind_in_bf16_and_float32, world_size=1)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_steps_in_bf16_within_bf16_rounding_of_float32(kind, model_kinds):
    """Editing / upsampler channels and task table, PT2V's trainable tower and frozen tokens, LoRA adapters, and the
    audio model (infill, video features, T5): one bf16 process against float32 on the same weights. Per tensor the
    bound is 32 ulps: the tower's q-projection grads (norm 1e-3, much cancellation) measure 16 ulps; the whole
    gradient, 4 ulps (measured 1.7)."""
    bf16, fp32 = model_kinds[kind]
    assert all(w.dtype == torch.bfloat16 for w in bf16["weights"].values())
    for got, want in zip(bf16["outputs"], fp32["outputs"]):
        assert 0 < _relative_error(got, want) < 8 * BF16_ULP
    names = sorted(bf16["grads"])
    assert names == sorted(fp32["grads"])
    worst = max((_relative_error(bf16["grads"][n], fp32["grads"][n]), n) for n in names)
    assert worst[0] < 32 * BF16_ULP, f"{kind}: worst bf16 gradient error {worst[0]:.2e} ({worst[1]})"
    whole = _relative_error(torch.cat([bf16["grads"][n].flatten() for n in names]),
                            torch.cat([fp32["grads"][n].flatten() for n in names]))
    assert whole < 4 * BF16_ULP, f"{kind}: whole-gradient bf16 error {whole:.2e}"
