"""The paper's model: parameter count, token count and FLOPs at 256 x 768 x 768 (SPEC section 1 and 8)."""

import json
import subprocess
import sys

import pytest

from megatron_moviegen.recipes import load_config
from megatron_moviegen.planning.summary import summarize
from megatron_moviegen.planning.flops import dit_training_flops


@pytest.fixture(scope="module")
def paper_summary():
    return summarize(load_config("t2v_30b"), frames=256, height=768, width=768)


def test_paper_model_has_about_30b_parameters(paper_summary):
    d, f = 6144, 16384
    # qkv + out, q + kv + out of cross-attention, SwiGLU (3 matrices), 3 norms, q/k norms, adaLN table
    per_block = 4 * d * d + 4 * d * d + 3 * d * f + 3 * d + 2 * 128 + 6 * d
    assert paper_summary["params_per_layer"] == per_block
    assert paper_summary["num_layers"] == 48 and paper_summary["hidden_size"] == 6144
    assert 29.0e9 < paper_summary["params_total"] < 31.0e9


def test_paper_video_is_73728_tokens(paper_summary):
    assert paper_summary["latent_shape"] == [16, 32, 96, 96]
    assert paper_summary["tokens"] == 73_728
    assert paper_summary["text_tokens"] == 300 + 256 + 100


def test_training_flops_match_the_papers_estimate(paper_summary):
    # SPEC: ~3.25e16 FLOPs forward+backward, about 60% of it in self-attention.
    assert paper_summary["flops_per_sample"] == pytest.approx(3.25e16, rel=0.1)
    assert 0.55 < paper_summary["attention_flop_fraction"] < 0.7


def test_attention_flops_grow_quadratically_and_matmuls_linearly():
    model = load_config("t2v_30b").model
    one, two = dit_training_flops(model, 10_000, text_tokens=0), dit_training_flops(model, 20_000, text_tokens=0)
    assert two.attention == pytest.approx(4 * one.attention)
    assert two.matmul == pytest.approx(2 * one.matmul)


def test_model_summary_cli_prints_json():
    out = subprocess.run(
        [sys.executable, "tools/model_summary.py", "--config", "t2v_30b", "--frames", "256", "--height", "768",
         "--width", "768", "--json"], capture_output=True, text=True, check=True,
    ).stdout
    summary = json.loads(out)
    assert {"params_total", "num_layers", "hidden_size", "tokens", "flops_per_sample"} <= set(summary)
    assert summary["tokens"] == 73_728


def test_position_tables_reject_a_video_larger_than_they_cover():
    with pytest.raises(ValueError, match="position table"):
        from megatron_moviegen.models.embeddings import FactorizedPositionEmbedding

        FactorizedPositionEmbedding(load_config("tiny").model, std=0.02)((9, 4, 4))


def test_lora_on_the_paper_model_trains_only_its_adapters():
    lora = summarize(load_config("t2v_30b", ["model.lora.rank=16"]), frames=256, height=768, width=768)
    d, f = 6144, 16384
    # rank x (in + out) of qkv, self-attention out, cross-attention q, kv and out, fc1 (gate and up), fc2
    per_block = 16 * ((d + 3 * d) + 2 * d + 2 * d + (d + 2 * d) + 2 * d + (d + 2 * f) + (f + d))
    assert lora["params_trainable"] == 48 * per_block == 108_527_616
