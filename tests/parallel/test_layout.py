"""SequenceLayout: the one place that decides which rank holds which tokens."""

import pytest
import torch

from megatron_moviegen.diffusion.flow_matching import sequence_flow_matching_loss
from megatron_moviegen.parallel.layout import SequenceLayout
from tests.harness import run_distributed


def test_single_process_layout_is_the_identity():
    layout = SequenceLayout()
    tokens = torch.arange(12.0).view(6, 1, 2)
    assert layout.split(tokens) is tokens and layout.gather(tokens) is tokens


def test_split_takes_the_cp_chunk_then_the_sp_chunk_within_it():
    whole = torch.arange(8)
    owners = {(cp, sp): SequenceLayout(cp_rank=cp, cp_size=2, sp_rank=sp, sp_size=2).split(whole).tolist()
              for cp in range(2) for sp in range(2)}
    assert owners == {(0, 0): [0, 1], (0, 1): [2, 3], (1, 0): [4, 5], (1, 1): [6, 7]}


def test_split_names_the_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="6 tokens is not divisible by context_parallel_size 2 x sequence-parallel TP size 2"):
        SequenceLayout(cp_size=2, sp_size=2).split(torch.zeros(6))


def _split_gather_and_loss(rank, world_size):
    from megatron_moviegen.parallel.config import ParallelConfig
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.runtime import Runtime

    init_model_parallel(ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True,
                                       context_parallel_size=2), Runtime.resolve())
    layout = SequenceLayout.from_parallel_state(sequence_parallel=True)
    gen = torch.Generator().manual_seed(0)
    target, prediction = torch.randn(8, 1, 3, generator=gen), torch.randn(8, 1, 3, generator=gen)
    weights = (torch.arange(8) % 3 != 0).float().view(8, 1)  # an infill's frames to generate: 5 of 8
    local = layout.split(prediction)
    _, reported = sequence_flow_matching_loss(local, target, layout)
    _, weighted = sequence_flow_matching_loss(local, target, layout, weights)
    result = {"gathered": torch.equal(layout.gather(local), prediction), "reported": reported.item(),
              "weighted": weighted.item(), "chunks": layout.num_chunks}
    destroy()
    return result


def test_four_ranks_gather_the_whole_sequence_and_sum_the_loss_to_the_single_process_mean():
    results = run_distributed(_split_gather_and_loss, 4)
    gen = torch.Generator().manual_seed(0)
    target, prediction = torch.randn(8, 1, 3, generator=gen), torch.randn(8, 1, 3, generator=gen)
    expected = (prediction - target).pow(2).mean().item()
    generated = torch.arange(8) % 3 != 0
    expected_weighted = (prediction - target)[generated].pow(2).mean().item()
    assert expected_weighted != pytest.approx(expected)
    for result in results:
        assert result["gathered"] and result["chunks"] == 4
        assert result["reported"] == pytest.approx(expected, rel=1e-6)
        assert result["weighted"] == pytest.approx(expected_weighted, rel=1e-6)


def test_ddp_chunks_are_connected_to_megatrons_schedules_as_megatrons_training_loop_does():
    from types import SimpleNamespace

    from megatron_moviegen.parallel.ddp import connect_ddp_to_schedules, finish_param_gather

    synced = []

    def chunk(overlap_grad, overlap_param):
        ddp_config = SimpleNamespace(overlap_grad_reduce=overlap_grad, overlap_param_gather=overlap_param,
                                     align_param_gather=overlap_param)
        return SimpleNamespace(module=SimpleNamespace(config=SimpleNamespace()), ddp_config=ddp_config,
                               no_sync="no_sync", start_grad_sync="grad", start_param_sync=lambda **kw: synced.append(kw))

    plain = [chunk(False, False)]
    connect_ddp_to_schedules(plain)
    config = plain[0].module.config
    assert config.no_sync_func == "no_sync" and not hasattr(config, "grad_sync_func")
    finish_param_gather(plain)
    assert synced == []
    shared = SimpleNamespace()
    overlapped = [chunk(True, True), chunk(True, True)]  # two virtual pipeline chunks share one config
    for c in overlapped:
        c.module.config = shared
    connect_ddp_to_schedules(overlapped)
    assert shared.no_sync_func == ["no_sync", "no_sync"] and shared.grad_sync_func == ["grad", "grad"]
    assert len(shared.param_sync_func) == 2
    finish_param_gather(overlapped)
    assert synced == [{"force_sync": True}, {"force_sync": True}]
