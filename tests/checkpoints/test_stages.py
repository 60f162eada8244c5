"""Moving to the next stage: previous weights load, position tables grow (SPEC section 4)."""

import pytest
import torch

from megatron_moviegen.recipes import load_config
from megatron_moviegen.checkpoints.stages import grow_table
from tests.harness import run_distributed


def _ramp(n):
    return torch.arange(float(n))[:, None] * torch.tensor([1.0, 2.0, -1.0])  # (n, 3): row i holds i * (1, 2, -1)


def test_same_resolution_growth_keeps_learned_rows_and_extends_with_the_last():
    table = _ramp(16)
    grown = grow_table(table, 32)
    assert grown.shape == (32, 3)
    assert torch.equal(grown[:16], table)  # a square image keeps the positions it was trained with
    assert torch.equal(grown[16:], table[-1].expand(16, 3))
    assert grow_table(table, 16) is table


def test_resolution_change_resamples_at_the_ratio_so_scene_positions_line_up():
    table = _ramp(21)  # stage 2's 256 px table: row i at scene position (i + 0.5) / 21 of a 336 px side
    grown = grow_table(table, 64, scale=3.0)  # 768 px: 64 rows
    # Row 3k + 1 is the centre of the old row k's three sub-tokens: exactly old row k.
    for k in (0, 5, 20):
        assert torch.allclose(grown[3 * k + 1], table[k])
    # Rows between take the linear blend of their neighbours: position (j + 0.5) / 3 - 0.5.
    assert torch.allclose(grown[2], table[0] + (table[1] - table[0]) / 3)
    assert torch.equal(grown[0], table[0]) and torch.equal(grown[-1], table[-1])  # clamped past the ends


def test_tables_never_shrink_and_resolution_never_drops():
    with pytest.raises(ValueError, match="shrinks from 16 to 8"):
        grow_table(_ramp(16), 8)
    with pytest.raises(ValueError, match="scale: got 0.5"):
        grow_table(_ramp(16), 16, scale=0.5)


def _stage(rank, world_size, old_dir):
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.runtime import Runtime
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.checkpoints.distributed import CheckpointError, save_checkpoint
    from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage

    small = load_config("tiny", ["model.max_height=8", "model.max_width=8"])
    init_model_parallel(small.parallel, Runtime.resolve())
    torch.manual_seed(0)
    old = build_dit_chunks(small, Runtime.resolve())
    optimizer = build_optimizer(old, small.train, Runtime.resolve(distributed_optimizer=False))
    save_checkpoint(old_dir, 1, old, optimizer, build_scheduler(optimizer, small.train), None, small)
    big = load_config("tiny", ["model.max_height=16", "model.max_width=16"])
    torch.manual_seed(1)
    new = build_dit_chunks(big, Runtime.resolve())
    load_weights_for_new_stage(str(old_dir), new, resolution=small.data.buckets.resolution)
    same = {k: v.detach().clone() for k, v in new[0].named_parameters()}
    load_weights_for_new_stage(str(old_dir), new, resolution=2 * small.data.buckets.resolution)
    result = {"old": {k: v.detach().clone() for k, v in old[0].named_parameters()}, "new": same,
              "doubled": {k: v.detach().clone() for k, v in new[0].named_parameters()}}
    shallower = build_dit_chunks(load_config("tiny", ["model.max_height=16", "model.max_width=16",
                                                      "model.num_layers=2"]), Runtime.resolve())
    try:
        load_weights_for_new_stage(str(old_dir), shallower)
    except CheckpointError as exc:
        result["fewer layers"] = str(exc)
    destroy()
    return result


@pytest.fixture(scope="module")
def stage_result(tmp_path_factory):
    return run_distributed(_stage, 1, args=(tmp_path_factory.mktemp("stages") / "stage1",))[0]


def test_next_stage_loads_all_weights_and_grows_the_spatial_tables(stage_result):
    old, new = stage_result["old"], stage_result["new"]
    for name, tensor in old.items():
        if name.startswith("position_embedding."):
            continue
        assert torch.equal(new[name], tensor), name
    assert torch.equal(new["position_embedding.t"], old["position_embedding.t"])
    assert new["position_embedding.h"].shape[0] == 16 and old["position_embedding.h"].shape[0] == 8
    assert torch.equal(new["position_embedding.h"][:8], old["position_embedding.h"])
    assert torch.equal(new["position_embedding.h"], grow_table(old["position_embedding.h"], 16))
    doubled = stage_result["doubled"]
    for name in ("h", "w"):
        old_table = old[f"position_embedding.{name}"]
        assert torch.equal(doubled[f"position_embedding.{name}"], grow_table(old_table, 16, scale=2.0))
    assert torch.equal(doubled["position_embedding.t"], old["position_embedding.t"])  # time is not resampled


CONDITIONED = ["model.condition_channels=16", "model.num_tasks=3", "data.edit.tasks=[image_edit,video_edit,t2v]",
               "model.extra_context={reference_image: {width: 8, max_length: 4}}",
               "data.reference={encoder: tiny, max_length: 4}"]


def _save_random_t2v(old_dir, runtime):
    """The tiny T2V DiT with well-conditioned random weights, saved as a training checkpoint in `old_dir`."""
    from megatron_moviegen.checkpoints.distributed import save_checkpoint
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import init_model_parallel
    from megatron_moviegen.training.optimizer import build_optimizer, build_scheduler
    from tests.parallel.dit_parity import randomize_well_conditioned

    t2v = load_config("tiny")
    init_model_parallel(t2v.parallel, runtime)
    torch.manual_seed(0)
    old = build_dit_chunks(t2v, runtime)
    randomize_well_conditioned(old[0])  # the zero-initialised adaLN would make any two models agree
    optimizer = build_optimizer(old, t2v.train, runtime)
    save_checkpoint(old_dir, 1, old, optimizer, build_scheduler(optimizer, t2v.train), None, t2v)
    return t2v, old


def _t2v_inputs(t2v, gen):
    from megatron_moviegen.conditioning import Tokens

    latents = torch.randn(1, 16, 2, 8, 8, generator=gen)
    text = {n: Tokens(torch.randn(1, e.max_length, e.width, generator=gen),
                      torch.rand(1, e.max_length, generator=gen) > 0.3)
            for n, e in t2v.model.text_encoders.items()}
    return latents, text, torch.tensor([0.4])


def _conditioned_from_t2v(rank, world_size, old_dir):
    """A T2V checkpoint loaded into a model with condition channels, a task table and a reference-image source."""
    from megatron_moviegen.conditioning import Conditioning, Tokens
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.runtime import Runtime

    runtime = Runtime.resolve(distributed_optimizer=False)
    t2v, old = _save_random_t2v(old_dir, runtime)
    new_cfg = load_config("tiny", CONDITIONED)
    new = build_dit_chunks(new_cfg, runtime)
    load_weights_for_new_stage(str(old_dir), new)

    gen = torch.Generator().manual_seed(3)
    latents, text, t = _t2v_inputs(t2v, gen)
    reference = Tokens(torch.randn(1, 4, 8, generator=gen), torch.zeros(1, 4, dtype=torch.bool))
    with torch.no_grad():
        before = old[0](latents, t, Conditioning(text))
        neutral = Conditioning({**text, "reference_image": reference}, channels=torch.zeros(1, 16, 2, 8, 8),
                               task=torch.tensor([0]))
        after = new[0](latents, t, neutral)
        weight = new[0].patch_embed.proj.weight.detach().clone()
        new[0].patch_embed.proj.weight[:, 16:].normal_(0.0, 0.1, generator=gen)  # as if trained
        with_source = new[0](latents, t, Conditioning(neutral.tokens, torch.randn(1, 16, 2, 8, 8, generator=gen),
                                                      neutral.task))
    errors = {}
    for bad, message in ((Conditioning(neutral.tokens, None, neutral.task), "conditioning.channels"),
                         (Conditioning(neutral.tokens, neutral.channels, None), "task"),
                         (Conditioning(text, neutral.channels, neutral.task), "context tokens")):
        try:
            new[0](latents, t, bad)
        except (ValueError, KeyError) as exc:
            errors[message] = str(exc)
    destroy()
    return {"before": before, "after": after, "with_source": with_source, "errors": errors, "weight": weight}


def test_a_t2v_checkpoint_loads_into_a_conditioned_model_and_gives_the_same_output_with_neutral_conditions(tmp_path):
    result = run_distributed(_conditioned_from_t2v, 1, args=(tmp_path / "t2v",))[0]
    # Zero channels, task 0 and masked reference tokens: exactly the old output (a reference source masked in every
    # sample is left out of the context, so the attention reduces over the same keys as before).
    assert torch.equal(result["after"], result["before"])
    assert not torch.allclose(result["with_source"], result["after"], atol=1e-3)  # trained channels are read
    assert not result["weight"][:, 16:].any() and result["weight"][:, :16].any()  # new input channels start at 0
    assert set(result["errors"]) == {"conditioning.channels", "task", "context tokens"}, result["errors"]


def test_next_stage_with_fewer_layers_is_refused_naming_the_dropped_tensor(stage_result):
    message = stage_result["fewer layers"]
    assert "checkpoint tensor 'layers.2.cross_attention.linear_kv.weight' (128, 64) is not in this model" in message
    assert "model.num_layers=4, this model 2" in message


def _stage_from_t2v(rank, world_size, old_dir, recipe):
    """The tiny T2V checkpoint loaded as the start of a conditioned recipe (upsampler_tiny, edit_tiny: its
    train.load_from); the new model's output with zero and with random condition channels, for each task."""
    from megatron_moviegen.conditioning import Conditioning
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy
    from megatron_moviegen.runtime import Runtime

    runtime = Runtime.resolve(distributed_optimizer=False)
    t2v, old = _save_random_t2v(old_dir, runtime)
    cfg = load_config(recipe, [f"train.load_from={old_dir}", "parallel.tensor_model_parallel_size=1",
                               "parallel.sequence_parallel=false"])
    new = build_dit_chunks(cfg, runtime)
    load_weights_for_new_stage(cfg.train.load_from, new, resolution=cfg.data.buckets.resolution)
    latents, text, t = _t2v_inputs(t2v, torch.Generator().manual_seed(3))
    source = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    tasks = [torch.tensor([k]) for k in range(cfg.model.num_tasks)] or [None]
    with torch.no_grad():
        before = old[0](latents, t, Conditioning(text))
        outputs = [new[0](latents, t, Conditioning(text, channels=channels, task=task))
                   for channels in (torch.zeros_like(source), source) for task in tasks]
    destroy()
    return {"before": before, "outputs": outputs, "condition_channels": cfg.model.condition_channels,
            "num_tasks": cfg.model.num_tasks}


@pytest.mark.parametrize("recipe, tasks", [("upsampler_tiny", 0), ("edit_tiny", 2)])
def test_conditioned_recipes_start_from_a_t2v_checkpoint_with_exactly_its_output(tmp_path, recipe, tasks):
    result = run_distributed(_stage_from_t2v, 1, args=(tmp_path / "t2v", recipe))[0]
    assert (result["condition_channels"], result["num_tasks"]) == (16, tasks)
    # The new input channels and the task table start at zero: with any source (zero or random) and any task the
    # loaded model is the T2V model until trained.
    assert len(result["outputs"]) == 2 * max(tasks, 1)
    for output in result["outputs"]:
        assert torch.allclose(output, result["before"], rtol=1e-6, atol=1e-7)


def _frozen_then_trained_tower(rank, world_size, root):
    from pathlib import Path

    from megatron_moviegen.checkpoints.distributed import save_checkpoint
    from megatron_moviegen.checkpoints.stages import load_weights_for_new_stage
    from megatron_moviegen.models.vision_tower import save_tiny_vision_tower
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.runtime import Runtime

    root = Path(root)
    save_tiny_vision_tower(root / "tower")
    one = ["parallel.tensor_model_parallel_size=1", "parallel.sequence_parallel=false",
           f"data.reference.encoder={root / 'tower'}"]
    runtime = Runtime.resolve()
    frozen = load_config("pt2v_tiny", one)
    init_model_parallel(frozen.parallel, runtime)
    save_checkpoint(root / "frozen", 1, build_dit_chunks(frozen, runtime), None, None, None, frozen)
    destroy()
    trained = load_config("pt2v_tiny_trainable", one)
    init_model_parallel(trained.parallel, runtime)
    kept = load_weights_for_new_stage(str(root / "frozen"), build_dit_chunks(trained, runtime))
    destroy()
    return kept


def test_a_frozen_tower_stage_loads_into_the_trained_tower_stage_with_only_the_tower_new(tmp_path):
    """pt2v_stage2 (tower frozen: not in the DiT) -> pt2v_stage3 (tower trained), at tiny size: every saved tensor
    loads, and the tower's are the only new ones (training starts them from the tower's pretrained folder)."""
    kept = run_distributed(_frozen_then_trained_tower, 1, args=(tmp_path,))[0]
    tower = "context_projection.encoders.reference_image."
    assert kept and all(name.startswith(tower) and "projection" not in name[len(tower):] for name in kept), kept
    assert any(name.endswith("embeddings.patch_embedding.weight") for name in kept)
