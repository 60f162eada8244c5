"""Every parallel layout computes the same function, and the same gradients, as one process (float32, gloo)."""

import pytest
import torch

from tests.harness import run_distributed
from tests.parallel.dit_parity import run_step

RTOL = 1e-5


@pytest.fixture(scope="module")
def reference():
    return run_distributed(run_step, world_size=1, args=([], None))[0]


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


def _merged_grads(results: list[dict]) -> dict:
    """Union of the ranks' grads; a parameter held by several ranks (TP/CP/PP replicas) must agree."""
    merged = {}
    for result in results:
        for name, grad in result["grads"].items():
            if name in merged:
                assert _relative_error(grad, merged[name]) < RTOL, f"ranks disagree on the gradient of {name}"
            else:
                merged[name] = grad
    return merged


LAYOUTS = {
    "tp2": (2, ["parallel.tensor_model_parallel_size=2"]),
    "tp2_sp": (2, ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"]),
    "cp2": (2, ["parallel.context_parallel_size=2"]),
    "pp2": (2, ["parallel.pipeline_model_parallel_size=2"]),
    "tp2_sp_cp2": (4, ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true",
                       "parallel.context_parallel_size=2"]),
    "tp2_pp2": (4, ["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parity_with_single_process(layout, reference):
    world_size, overrides = LAYOUTS[layout]
    results = run_distributed(run_step, world_size=world_size, args=(overrides, reference))

    outputs = [r["outputs"] for r in results if r["outputs"] is not None]
    assert outputs, "no rank returned outputs"
    for rank_outputs in outputs:
        assert len(rank_outputs) == len(reference["outputs"])
        for got, want in zip(rank_outputs, reference["outputs"]):
            assert got.shape == want.shape
            assert _relative_error(got, want) < RTOL

    grads = _merged_grads(results)
    assert set(grads) == set(reference["grads"])
    worst = max(_relative_error(grads[n], reference["grads"][n]) for n in grads)
    assert worst < RTOL, f"worst relative gradient error {worst:.2e}"
    # Every parameter gets a non-trivial gradient: nothing is silently detached.
    assert all(reference["grads"][n].abs().sum() > 0 for n in grads)
