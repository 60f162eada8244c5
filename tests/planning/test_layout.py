import pytest

from megatron_moviegen.config.schema import ConfigError
from megatron_moviegen.planning.layout import format_plan, plan_layout
from megatron_moviegen.recipes import load_config


def test_the_base_30b_recipe_plans_on_512_gpus_despite_its_batch_of_one():
    cfg = load_config("t2v_30b")
    assert cfg.train.global_batch_size == 1  # the stages set the real batch; the base recipe keeps the default
    plan = plan_layout(cfg, 512)
    assert plan.data_parallel_size == 64 and plan.num_microbatches is None
    assert "multiple of 64" in plan.batch_note
    assert plan.tokens == 73_728 and 0 < plan.memory.total_gib < 80e9 / 2**30
    assert "DP 64" in format_plan(plan, cfg, 75.0)


def test_the_memory_of_a_layout_does_not_depend_on_the_global_batch():
    base = plan_layout(load_config("t2v_30b"), 512)
    trainable = plan_layout(load_config("t2v_30b", ["train.global_batch_size=128"]), 512)
    assert trainable.num_microbatches == 2 and "2 microbatches" in trainable.batch_note
    assert trainable.memory == base.memory


def test_a_world_size_that_does_not_divide_the_model_parallel_groups_is_refused():
    with pytest.raises(ConfigError, match="world size 500 is not divisible"):
        plan_layout(load_config("t2v_30b"), 500)
