"""Every parallel layout computes the same function, and the same gradients, as one process (float32, gloo)."""

import pytest
import torch

from tests.harness import run_distributed
from tests.parallel.dit_parity import run_step

RTOL = 1e-5


# What the model is conditioned on besides text: nothing (text-to-video), or every other condition at once: 16
# condition channels concatenated to the noisy latent before patchify plus a task embedding added to the time
# embedding and 2 task tokens appended to the context (video editing, Emu Edit's; the spatial upsampler is the same
# model without the task table; microbatch i has task i % 2), and two extra cross-attention sources (given in
# microbatch 0, dropped in microbatch 1, where they are left out of the context): a reference image through a
# trainable vision tower in the model (personalization: a 1-layer CLIP ViT, 16 px in 8 px patches -> 5 tokens of 8,
# padded to 6) and precomputed tokens (a frozen tower's; 3 of them, so the context of microbatch 0,
# 80 + 80 + 16 + 6 + 3 + 2 = 187 tokens, is padded with a masked one under TP=2 + SP).
TOWER = ("{hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2, image_size: 16, "
         "patch_size: 8}")
# LoRA (models/lora.py): adapters of rank 4 on all seven linears of every block (B random, as if trained, so both A
# and B get gradients), everything else frozen: only the adapters' gradients exist and are compared.
# Movie Gen Audio (recipe audio_tiny): 128-channel latents of 8 frames, one token each, 32 channels of video
# features added to the tokens, T5 text, and the infill's known latents and mask (frames 0-2 known in microbatch 0).
CONDITIONS = {"t2v": [], "lora": ["model.lora.rank=4"], "conditioned": [
    "model.condition_channels=16", "model.num_tasks=2", "model.task_tokens=2",
    "data.edit.tasks=[image_edit,video_edit]",
    f"model.extra_context={{reference_image: {{width: 8, max_length: 6, encoder: {TOWER}}}, "
    "frozen_tokens: {width: 8, max_length: 3}}", "data.reference={encoder: tiny, max_length: 6, trainable: true}"],
    "audio": ["parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false"]}
RECIPES = {"audio": "audio_tiny"}



@pytest.fixture(scope="module")
def references():
    """The single-process reference of each condition, computed on first use."""
    cache = {}

    def get(condition):
        if condition not in cache:
            cache[condition] = run_distributed(run_step, world_size=1, args=(CONDITIONS[condition], None,
                                                                             RECIPES.get(condition, "tiny")))[0]
        return cache[condition]

    return get


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


# LoRA on two layouts that exercise each of its paths: TP x SP x CP, and TP without SP x PP (layer offsets). The
# audio model on TP x SP, CP and both (PP is the video model's, unchanged).
SOME_LAYOUTS = {"lora": ("tp2_sp_cp2", "tp2_pp2"), "audio": ("tp2_sp", "cp2", "tp2_sp_cp2")}
CASES = [(condition, layout) for condition in CONDITIONS for layout in LAYOUTS
         if layout in SOME_LAYOUTS.get(condition, LAYOUTS)]


@pytest.mark.parametrize("condition,layout", CASES)
def test_parity_with_single_process(condition, layout, references):
    reference = references(condition)
    world_size, overrides = LAYOUTS[layout]
    results = run_distributed(run_step, world_size=world_size, args=(CONDITIONS[condition] + overrides, reference,
                                                                     RECIPES.get(condition, "tiny")))

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
    if condition == "lora":  # 4 layers x 7 linears x (A, B), and nothing else trains
        assert len(grads) == 56 and all(n.endswith(("_lora.a", "_lora.b")) for n in grads), sorted(grads)
