"""The one conditioning type: slicing, stacking, guidance batches, text dropout and its storage format."""

import pytest
import torch
from safetensors.torch import load, save

from megatron_moviegen.conditioning import Conditioning, Tokens


def _sample(seed: int, channels: bool = True) -> Conditioning:
    gen = torch.Generator().manual_seed(seed)
    return Conditioning(
        tokens={"ul2": Tokens(torch.randn(4, 3, generator=gen), torch.tensor([True, True, False, False])),
                "reference_image": Tokens(torch.randn(2, 5, generator=gen), torch.tensor([True, True]))},
        channels=torch.randn(16, 2, 4, 4, generator=gen) if channels else None,
        task=torch.tensor(seed % 3),
    )


def test_stack_then_batch_slice_returns_each_sample():
    samples = [_sample(i) for i in range(3)]
    batch = Conditioning.stack(samples)
    assert batch.batch_size == 3 and batch.channels.shape == (3, 16, 2, 4, 4) and batch.task.tolist() == [0, 1, 2]
    middle = batch.batch(1, 2)
    assert torch.equal(middle.tokens["ul2"].embeddings[0], samples[1].tokens["ul2"].embeddings)
    assert torch.equal(middle.channels[0], samples[1].channels)


def test_keep_tokens_masks_only_the_named_sources_of_dropped_samples():
    batch = Conditioning.stack([_sample(0), _sample(1)])
    dropped = batch.keep_tokens(torch.tensor([True, False]), sources=["ul2"])
    assert dropped.tokens["ul2"].mask.tolist() == [[True, True, False, False], [False] * 4]
    assert torch.equal(dropped.tokens["reference_image"].mask, batch.tokens["reference_image"].mask)
    assert torch.equal(dropped.channels, batch.channels)  # the source video is not text: never dropped
    assert batch.tokens["ul2"].mask[1].any()  # the original is untouched


def test_keep_channels_zeroes_the_source_of_dropped_samples_only():
    batch = Conditioning.stack([_sample(0), _sample(1)])
    dropped = batch.keep_channels(torch.tensor([False, True]))
    assert not dropped.channels[0].any() and torch.equal(dropped.channels[1], batch.channels[1])
    assert torch.equal(dropped.tokens["ul2"].mask, batch.tokens["ul2"].mask) and torch.equal(dropped.task, batch.task)
    assert not batch.without_channels().channels.any() and batch.channels[0].any()
    with pytest.raises(ValueError, match="no channels"):
        Conditioning.stack([_sample(0, channels=False)]).keep_channels(torch.tensor([True]))


def test_without_tokens_is_the_unconditional_branch():
    uncond = Conditioning.stack([_sample(0), _sample(1)]).without_tokens()
    assert not any(tokens.mask.any() for tokens in uncond.tokens.values())
    assert uncond.channels is not None and uncond.task is not None


def test_cat_puts_cond_before_uncond_and_refuses_mismatched_sources():
    cond, uncond = Conditioning.stack([_sample(0)]), Conditioning.stack([_sample(1)])
    both = Conditioning.cat([cond, uncond])
    assert torch.equal(both.tokens["ul2"].embeddings[1], uncond.tokens["ul2"].embeddings[0])
    with pytest.raises(ValueError, match="token/image sources differ"):
        Conditioning.cat([cond, Conditioning({"ul2": cond.tokens["ul2"]}, cond.channels, cond.task)])
    with pytest.raises(ValueError, match="channels or a task"):
        Conditioning.stack([_sample(0), _sample(1, channels=False)])


def test_storage_round_trip_casts_floats_only():
    sample = _sample(2)
    restored = Conditioning.from_tensors(load(save(sample.to_tensors(torch.bfloat16))))
    assert set(restored.tokens) == {"ul2", "reference_image"}
    assert restored.tokens["ul2"].embeddings.dtype == torch.bfloat16
    assert torch.equal(restored.tokens["ul2"].mask, sample.tokens["ul2"].mask)
    assert torch.equal(restored.task, sample.task) and restored.task.dtype == torch.long
    assert torch.allclose(restored.channels.float(), sample.channels, atol=1e-2, rtol=1e-2)


def test_images_travel_with_the_conditioning_and_drop_like_tokens():
    from megatron_moviegen.conditioning import Images

    def one(seed):
        gen = torch.Generator().manual_seed(seed)
        return Conditioning({"ul2": Tokens(torch.randn(3, 4, generator=gen), torch.ones(3, dtype=torch.bool))},
                            images={"reference_image": Images(torch.randn(3, 8, 8, generator=gen), torch.tensor(True))})

    batch = Conditioning.stack([one(0), one(1)])
    assert batch.images["reference_image"].pixels.shape == (2, 3, 8, 8) and batch.batch_size == 2
    back = Conditioning.from_tensors(batch.to_tensors(torch.float32))
    assert torch.equal(back.images["reference_image"].pixels, batch.images["reference_image"].pixels)
    assert back.images["reference_image"].present.tolist() == [True, True]
    dropped = batch.keep_tokens(torch.tensor([True, False]), ["reference_image"])
    assert dropped.images["reference_image"].present.tolist() == [True, False]
    assert dropped.tokens["ul2"].mask.all()  # only the named source is dropped
    assert batch.frames(0, 1).images is batch.images  # a sampling window keeps the images
    assert not Conditioning.cat([batch, batch.without_tokens()]).images["reference_image"].present[2:].any()
