"""models/embeddings.py: Emu Edit's task tokens in the cross-attention context."""

import pytest
import torch

from megatron_moviegen.conditioning import Tokens
from megatron_moviegen.models.embeddings import ContextProjection
from megatron_moviegen.recipes import load_config


def _projection(task_tokens: int) -> tuple[ContextProjection, dict[str, Tokens]]:
    model = load_config("edit_tiny", [f"model.task_tokens={task_tokens}"]).model
    torch.manual_seed(0)
    projection = ContextProjection(model)
    tokens = {name: Tokens(torch.randn(2, s.max_length, s.width), torch.ones(2, s.max_length, dtype=torch.bool))
              for name, s in model.text_encoders.items()}
    return projection, tokens


def test_each_sample_gets_its_tasks_tokens_after_the_text():
    projection, tokens = _projection(3)
    plain, _ = _projection(0)
    context, real = projection(tokens, task=torch.tensor([1, 0]))
    text, text_real = plain(tokens)
    n = text.shape[0]
    assert context.shape == (n + 3, 2, text.shape[2]) and real.shape == (2, n + 3) and real.all()
    torch.testing.assert_close(context[:n], text)  # the sources are unchanged
    torch.testing.assert_close(context[n:, 0], projection.task_tokens[1])
    torch.testing.assert_close(context[n:, 1], projection.task_tokens[0])
    assert projection.task_tokens.requires_grad and projection.task_tokens.shape == (2, 3, text.shape[2])


def test_a_model_with_task_tokens_refuses_no_task_and_tokens_need_tasks():
    projection, tokens = _projection(2)
    with pytest.raises(ValueError, match="task: none given, the model has 2 context tokens per task"):
        projection(tokens)
    with pytest.raises(Exception, match="task_tokens: got 2, but num_tasks is 0"):
        load_config("tiny", ["model.task_tokens=2"])
