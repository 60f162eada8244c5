"""One flow-matching microbatch: text and source dropout for guidance, drawn from the step's generator."""

import torch

from megatron_moviegen.conditioning import Conditioning, Tokens
from megatron_moviegen.recipes import load_config
from megatron_moviegen.training.microbatch import flow_matching_microbatch


def _batch(cfg, b: int):
    gen = torch.Generator().manual_seed(0)
    tokens = {n: Tokens(torch.randn(b, e.max_length, e.width, generator=gen), torch.ones(b, e.max_length, dtype=torch.bool))
              for n, e in cfg.model.text_encoders.items()}
    latents = torch.randn(b, 16, 2, 4, 4, generator=gen)
    return latents, Conditioning(tokens, channels=torch.randn(b, 16, 2, 4, 4, generator=gen) + 3.0,
                                 task=torch.zeros(b, dtype=torch.long))


def _run(cfg, latents, cond, text_drop, source_drop):
    return flow_matching_microbatch(latents, cond, torch.Generator().manual_seed(5), cfg, torch.device("cpu"),
                                    text_drop, source_drop)


def test_source_dropout_zeroes_channels_after_the_text_draws_and_leaves_the_rest_as_without_it():
    cfg = load_config("edit_tiny")
    latents, cond = _batch(cfg, 64)
    plain = _run(cfg, latents, cond, 0.3, 0.0)
    all_dropped = _run(cfg, latents, cond, 0.3, 1.0)
    half = _run(cfg, latents, cond, 0.3, 0.5)
    assert torch.equal(plain["conditioning"].channels, cond.channels)  # 0: nothing drawn, nothing zeroed
    for run in (all_dropped, half):  # the same noise, times and text drops as without source dropout
        assert torch.equal(run["noisy"], plain["noisy"]) and torch.equal(run["timesteps"], plain["timesteps"])
        assert torch.equal(run["conditioning"].tokens["ul2"].mask, plain["conditioning"].tokens["ul2"].mask)
    assert not all_dropped["conditioning"].channels.any()
    zeroed = ~half["conditioning"].channels.flatten(1).any(dim=1)  # (64,)
    kept = half["conditioning"].channels[~zeroed]
    assert torch.equal(kept, cond.channels[~zeroed])
    assert 16 < int(zeroed.sum()) < 48
    text_dropped = ~plain["conditioning"].tokens["ul2"].mask.any(dim=1)
    # Independent draws: samples without text but with their source, and with text but without their source.
    assert (text_dropped & ~zeroed).any() and (~text_dropped & zeroed).any()


def test_condition_dropout_masks_a_reference_images_tokens_with_the_channels_and_keeps_the_text():
    cfg = load_config("tiny", ["model.condition_channels=16", "model.num_tasks=2", "data.edit.tasks=[image_edit,video_edit]",
                               "model.extra_context={reference_image: {width: 8, max_length: 4}}",
                               "data.reference={encoder: x, max_length: 4}"])
    latents, cond = _batch(cfg, 64)
    reference = Tokens(torch.randn(64, 4, 8), torch.ones(64, 4, dtype=torch.bool))
    cond = Conditioning({**cond.tokens, "reference_image": reference}, cond.channels, cond.task)
    plain = _run(cfg, latents, cond, 0.0, 0.0)
    half = _run(cfg, latents, cond, 0.0, 0.5)
    assert torch.equal(plain["conditioning"].tokens["reference_image"].mask, reference.mask)  # 0: nothing dropped
    dropped = ~half["conditioning"].tokens["reference_image"].mask.any(dim=1)  # (64,)
    assert 16 < int(dropped.sum()) < 48 and half["conditioning"].tokens["reference_image"].mask[~dropped].all()
    # One draw per sample for the whole condition: the reference goes exactly where the source channels go.
    assert torch.equal(dropped, ~half["conditioning"].channels.flatten(1).any(dim=1))
    assert half["conditioning"].tokens["ul2"].mask.all()  # text is not the condition
