import json

import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.text.config import EncoderConfig, TextEncodersConfig
from megatron_moviegen.text.encoders import TextEncoders
from megatron_moviegen.text.long_clip import finetune_long_clip, load_long_clip_config, main, step_batch
from megatron_moviegen.text.metaclip import extend_position_table
from megatron_moviegen.text.toy_clip import SEEN, byte_clip_tokenizer, draw_pairs, save_clip, tiny_clip


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """A CLIPModel at 77 positions and a manifest of 8 PNGs with long captions (deciding words past 77)."""
    root = tmp_path_factory.mktemp("long_clip")
    tokenizer = byte_clip_tokenizer()
    save_clip(root / "clip_77", tiny_clip(len(tokenizer), 77, width=16), tokenizer)
    images, captions = draw_pairs(SEEN, 8, "long", torch.Generator().manual_seed(0))
    rows = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        Image.fromarray(image.numpy()).save(root / f"{i}.png")
        rows.append(json.dumps({"path": f"{i}.png", "caption": caption}))
    (root / "train.jsonl").write_text("\n".join(rows) + "\n")
    return root


def run(pairs, out, steps, *overrides):
    cfg = load_long_clip_config("long_clip_tiny", [
        f"model.path={pairs / 'clip_77'}", f"data.manifest={pairs / 'train.jsonl'}", "data.eval_manifest=null",
        "data.batch_size=4", f"train.steps={steps}", "train.warmup_steps=1", "train.checkpoint_every=2",
        "train.lr=1e-2", f"train.out_dir={out}", *overrides])
    return finetune_long_clip(cfg, show_progress=False)


@pytest.fixture(scope="module")
def finetuned(pairs):
    run(pairs, pairs / "run", 3)
    return pairs / "run" / "checkpoint"


def test_new_positions_train_and_the_image_tower_stays(pairs, finetuned):
    before = CLIPModel.from_pretrained(pairs / "clip_77")
    after = CLIPModel.from_pretrained(finetuned)
    table = after.text_model.embeddings.position_embedding.weight
    assert table.shape[0] == 256 and after.config.text_config.max_position_embeddings == 256
    stretched = extend_position_table(before.text_model.embeddings.position_embedding.weight.detach(), 256)
    moved = (table - stretched).abs().amax(1)  # (256,) largest change per position
    assert (moved[78:100] > 0).all()  # positions past 77 that every caption reaches were trained
    assert torch.equal(moved[240:], torch.zeros(16))  # past the longest caption: no gradient, no weight decay
    for name, value in before.vision_model.state_dict().items():
        assert torch.equal(value, after.vision_model.state_dict()[name]), name
    assert torch.equal(before.visual_projection.weight, after.visual_projection.weight)
    assert not torch.equal(before.text_projection.weight, after.text_projection.weight)


def test_checkpoint_loads_through_the_text_encoders_at_256_positions(finetuned):
    off = EncoderConfig("", 1, enabled=False)
    config = TextEncodersConfig(ul2=off, byt5=off, metaclip=EncoderConfig(str(finetuned), 256), device="cpu",
                                dtype="float32")
    encoder = TextEncoders(config).encoders["metaclip"]
    saved = CLIPModel.from_pretrained(finetuned).text_model.embeddings.position_embedding.weight
    assert torch.equal(encoder.model.embeddings.position_embedding.weight, saved)
    assert encoder.tokenizer.model_max_length == 256
    assert json.loads((finetuned / "tokenizer_config.json").read_text())["model_max_length"] == 256


def test_resumed_run_ends_where_the_uninterrupted_one_does(pairs, finetuned, tmp_path):
    run(pairs, tmp_path, 2)  # checkpoint at step 2, then the job restarts and goes on to step 3
    history = run(pairs, tmp_path, 3)
    assert [r["step"] for r in history] == [3]
    resumed, straight = CLIPModel.from_pretrained(tmp_path / "checkpoint"), CLIPModel.from_pretrained(finetuned)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_batches_are_a_function_of_the_step():
    first_epoch = [i for step in range(4) for i in step_batch(step, 8, 2, seed=0)]
    assert sorted(first_epoch) == list(range(8))
    assert step_batch(5, 8, 2, seed=0) == step_batch(5, 8, 2, seed=0) != step_batch(1, 8, 2, seed=0)


@pytest.mark.parametrize("override, named", [("data.batch_size=1", "data.batch_size: got 1"),
                                             ("train.warmup_steps=500", "train.warmup_steps: got 500"),
                                             ("model.max_length=1", "model.max_length: got 1")])
def test_a_bad_config_is_refused_by_name(override, named):
    with pytest.raises(ConfigError, match=named):
        load_long_clip_config("long_clip_tiny", [override])


def test_command_refuses_a_batch_larger_than_the_manifest(pairs, tmp_path, capsys):
    status = main(["--config", "long_clip_tiny", "--out", str(tmp_path), f"model.path={pairs / 'clip_77'}",
                   f"data.manifest={pairs / 'train.jsonl'}", "data.eval_manifest=null", "data.batch_size=16"])
    assert status == 2
    assert "data.batch_size: got 16" in capsys.readouterr().err


def test_the_contrastive_loss_falls_on_the_pairs_it_trains_on(pairs, tmp_path):
    history = run(pairs, tmp_path, 20, "data.batch_size=8", "train.checkpoint_every=20")  # all 8 pairs each step
    assert history[-1]["loss"] < 0.85 * history[0]["loss"]  # measured: 2.13 -> 1.62
