import pytest

from megatron_moviegen.config import ConfigError, to_yaml
from megatron_moviegen.recipes import available_recipes, load_config
from megatron_moviegen.config.schema import build
from megatron_moviegen.recipes import MovieGenConfig


def test_recipes_load_and_round_trip_through_yaml():
    import yaml

    for name in available_recipes():
        cfg = load_config(name)
        again = build(MovieGenConfig, yaml.safe_load(to_yaml(cfg)))
        assert again == cfg


def test_paper_recipe_has_the_papers_shape():
    model = load_config("t2v_30b").model
    assert (model.num_layers, model.hidden_size, model.ffn_hidden_size) == (48, 6144, 16384)
    assert (model.num_attention_heads, model.head_dim) == (48, 128)
    assert model.patch_size == (1, 2, 2) and model.latent_channels == 16
    assert {k: (v.width, v.max_length) for k, v in model.text_encoders.items()} == {
        "ul2": (4096, 300), "metaclip": (1024, 256), "byt5": (1536, 100)}


def test_editing_stages_follow_text_to_video_with_source_channels_and_one_task_row_per_task():
    image, video = load_config("edit_image"), load_config("edit_video")
    for cfg in (image, video):
        assert cfg.model.condition_channels == cfg.model.latent_channels == 16
        assert cfg.model.num_tasks == len(cfg.data.edit.tasks) == 5 and cfg.flow.condition_drop_prob == 0.1
        assert cfg.data.edit.tasks == ["text_to_video", "image_edit", "animated_frame_edit", "video_segmentation",
                                       "video_edit"] and cfg.model.task_tokens == 8  # the paper's, Emu Edit's tokens
        assert (cfg.model.num_layers, cfg.model.hidden_size) == (48, 6144)  # the 30B T2V model's shape
    assert image.data.edit.default_task == "image_edit" and image.data.buckets.durations_s == []
    assert image.data.image_fraction == 1.0 and image.train.load_from == "/checkpoints/sft"
    assert video.data.edit.default_task == "video_edit" and video.data.buckets.durations_s[0] == 4.0
    assert video.train.load_from == image.train.checkpoint_dir  # stage 2 starts from stage 1


@pytest.mark.parametrize("overrides, message", [
    (["model.condition_channels=16"], "model.condition_channels: got 16, but neither data.upsample nor data.edit"),
    (["data.edit.default_task=video_edit"], "model.condition_channels: got 0, but data.edit gives the DiT 16"),
    (["model.condition_channels=16", "data.edit.default_task=video_edit"],
     r"model.num_tasks: got 0, but data.edit.tasks lists 2 task\(s\)"),
    (["model.condition_channels=16", "model.num_tasks=2", "data.edit.default_task=remove"],
     "edit.default_task: got 'remove', not in edit.tasks"),
    (["model.condition_channels=16", "data.edit.default_task=video_edit", "model.num_tasks=2",
      "data.upsample.degradation=blur"], "data.upsample and data.edit are both set"),
])
def test_condition_channels_and_tasks_must_be_what_the_data_gives(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", overrides)


def test_dotted_overrides_are_parsed_as_yaml_values():
    cfg = load_config("tiny", ["model.num_layers=2", "parallel.tensor_model_parallel_size=2",
                               "parallel.sequence_parallel=true", "model.patch_size=[1,1,1]"])
    assert cfg.model.num_layers == 2 and cfg.parallel.sequence_parallel is True
    assert cfg.model.patch_size == (1, 1, 1)


def test_aspect_ratios_unquoted_stay_ratios_not_base_60_numbers(tmp_path):
    """YAML 1.1 (PyYAML's safe_load) reads 1:1 as 61 and 16:9 as 969; recipes and overrides read them as written."""
    assert load_config("tiny", ["data.buckets.aspect_ratios=[1:1, 16:9]"]).data.buckets.aspect_ratios == ["1:1", "16:9"]
    recipe = tmp_path / "ratios.yaml"
    recipe.write_text("base: tiny\nname: ratios\ndata:\n  buckets:\n    aspect_ratios: [4:3, 1:1]\n")
    assert load_config(str(recipe)).data.buckets.aspect_ratios == ["4:3", "1:1"]
    assert load_config("tiny", ["train.lr=2.0e-4", "train.steps=0x10"]).train.lr == 2.0e-4  # numbers still numbers


@pytest.mark.parametrize("override, field", [
    ("model.num_layerz=3", "model.num_layerz"),
    ("model.num_layers=four", "model.num_layers"),
    ("model.hidden_size=65", "model.num_attention_heads"),
    ("parallel.tensor_model_parallel_size=3", "parallel.tensor_model_parallel_size"),
    ("parallel.sequence_parallel=true", "parallel.sequence_parallel"),
    ("model.transformer_impl=cuda", "model.transformer_impl"),
    ("parallel.pipeline_model_parallel_size=3", "parallel.pipeline_model_parallel_size"),
])
def test_bad_values_raise_naming_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("tiny", [override])


def test_unknown_recipe_lists_the_available_ones():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("no_such_recipe")


def test_world_size_must_be_divisible_by_the_model_parallel_size():
    cfg = load_config("tiny", ["parallel.tensor_model_parallel_size=2", "parallel.context_parallel_size=2"])
    assert cfg.parallel.check_world_size(8) == 2
    with pytest.raises(ConfigError, match="world size 6"):
        cfg.parallel.check_world_size(6)


def test_recipe_inheritance_merges_sections(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny\nname: child\nmodel:\n  num_layers: 2\n")
    cfg = load_config(str(child))
    assert cfg.name == "child" and cfg.model.num_layers == 2 and cfg.model.hidden_size == 64


def recipe_token_grids(cfg) -> dict[str, tuple[int, int, int]]:
    """Each bucket's token grid: the video buckets, or an audio model's durations (one token per latent frame)."""
    from megatron_moviegen.data.buckets import BucketTable, token_grid

    if cfg.data.audio is not None:
        return {f"{frames} latent frames": (frames, 1, 1) for frames in cfg.data.audio.latent_frames()}
    return {f"{b.aspect_ratio} {b.name}": token_grid(b, cfg.model) for b in BucketTable(cfg.data.buckets).buckets()}


@pytest.mark.parametrize("name", available_recipes())
def test_every_bucket_of_every_recipe_fits_its_position_tables_and_token_budget(name):
    import math

    cfg = load_config(name)
    model = cfg.model
    grids = recipe_token_grids(cfg)
    assert grids
    for bucket, (t, h, w) in grids.items():
        assert t <= model.max_frames and h <= model.max_height and w <= model.max_width, (name, bucket)
        assert t * h * w <= model.max_video_tokens, (name, bucket)
    if name in ("t2iv_768", "sft", "t2v_30b"):  # the longest 768 px clip is the paper's 73,728-token sample
        assert max(math.prod(grid) for grid in grids.values()) == 73728
    if name == "audio_13b":  # 10 s windows of 25 Hz latents
        assert list(grids.values()) == [(250, 1, 1)]


@pytest.mark.parametrize("override, match", [
    ("model.max_width=48", r"model\.max_width: 48 .* bucket 4:3 1x640x896"),
    ("model.max_frames=16", r"model\.max_frames: 16 .* bucket 9:16 160x1024x576"),
    ("model.max_video_tokens=70000", r"model\.max_video_tokens: bucket 9:16 256x1024x576 .* 73,728 tokens"),
])
def test_a_bucket_the_model_cannot_hold_is_refused_at_load_naming_it(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("t2iv_768", [override])


@pytest.mark.parametrize("overrides, bucket", [
    (["parallel.context_parallel_size=8"], "16:9 32x48x80 in data.buckets has 60 tokens"),
    (["parallel.context_parallel_size=2", "parallel.tensor_model_parallel_size=4", "parallel.sequence_parallel=true"],
     "16:9 32x48x80 in data.buckets has 60 tokens"),
])
def test_a_bucket_the_layout_cannot_split_is_refused_at_load_naming_it(overrides, bucket):
    # Before, the first batch of that bucket failed mid-run in the DiT's sequence split.
    with pytest.raises(ConfigError, match=rf"parallel\.context_parallel_size: bucket {bucket} .* not divisible"):
        load_config("tiny", overrides)
    load_config("tiny", ["parallel.context_parallel_size=4"])  # 64 and 60 tokens both divide by 4


@pytest.mark.parametrize("name", available_recipes())
def test_every_bucket_of_every_recipe_splits_over_its_layout(name):
    import math

    cfg = load_config(name)
    for bucket, grid in recipe_token_grids(cfg).items():
        assert math.prod(grid) % cfg.parallel.sequence_chunks == 0, (name, bucket)


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "train.lr: got nan, need a finite number (not nan or inf)"),
    ("train.lr=nan", "train.lr: got nan, need a finite number (not nan or inf)"),
    ("train.min_lr=.inf", "train.min_lr: got inf, need a finite number"),
    ("train.adam_beta1=nan", "train.adam_beta1: got nan, need a finite number"),
    ("train.adam_eps=nan", "train.adam_eps: got nan, need a finite number"),
    ("train.weight_decay=-.inf", "train.weight_decay: got -inf, need a finite number"),
    ("train.clip_grad=nan", "train.clip_grad: got nan, need a finite number"),
    ("data.image_fraction=nan", "data.image_fraction: got nan, need a finite number"),
    ("train.adam_beta2=1.0", "train.adam_beta2: got 1.0, must be in [0, 1)"),
    ("train.adam_eps=0", "train.adam_eps/weight_decay: got 0.0/0.0, need adam_eps > 0"),
])
def test_nan_inf_and_out_of_range_optimizer_values_are_refused_at_load_naming_the_field(override, message):
    # train.lr=nan passed every `<` check and died in torch's Adam at the first step.
    with pytest.raises(ConfigError) as refused:
        load_config("tiny", [override])
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_train_command_refuses_a_nan_learning_rate_in_one_line(capsys):
    from megatron_moviegen.train import main

    assert main(["--config", "tiny", "train.lr=nan"]) == 2
    err = capsys.readouterr().err
    assert err == "config error: train.lr: got nan, need a finite number (not nan or inf)\n", err


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "train.lr: got nan, need a finite number"),
    ("train.betas=[0.5,.nan]", "train.betas: got (0.5, nan), need finite numbers"),
    ("train.betas=[0.5,1.5]", "train.betas/grad_clip: got (0.5, 1.5)/1.0, need each beta in [0, 1)"),
])
def test_autoencoder_optimizer_values_must_be_finite_and_in_range(override, message):
    from megatron_moviegen.training.train_tae import load_tae_config

    with pytest.raises(ConfigError) as refused:
        load_tae_config("tae_tiny", [override])
    assert str(refused.value).startswith(message), str(refused.value)


def test_personalization_stages_chain_frozen_short_then_long_then_cross_paired_with_the_tower_trained():
    """SPEC section 6: each stage loads the one before; the tower is frozen (not in the DiT, tokens cached) for the
    paired stages and trained from the cross-paired stage on; references are face crops."""
    stages = [load_config(name) for name in ("pt2v_stage1", "pt2v_stage2", "pt2v_stage3", "pt2v_sft")]
    assert stages[0].train.load_from == load_config("sft").train.checkpoint_dir
    for before, after in zip(stages, stages[1:]):
        assert after.train.load_from == before.train.checkpoint_dir
    towers = [cfg.model.extra_context["reference_image"].encoder is not None for cfg in stages]
    assert towers == [False, False, True, True] == [cfg.data.reference.trainable for cfg in stages]
    assert max(stages[0].data.buckets.durations_s) < max(stages[1].data.buckets.durations_s) == 16.0
    assert {cfg.data.reference.crop for cfg in stages} == {"megatron_moviegen.data.face_crop:crop_face"}
    assert stages[3].train.lr < stages[2].train.lr
