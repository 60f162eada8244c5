"""The TransformerEngine spec, checked without TransformerEngine (it cannot be installed here).

Fakes stand in for `megatron.core.extensions.transformer_engine`: each subclasses the local module that the
local spec puts in the same slot and has the constructor signature of the real TE class (checked against the
installed megatron-core source), so building a block from the TE spec fails as it would on a GPU when a slot
holds the wrong class or Megatron calls it with arguments TE does not take.
"""

from __future__ import annotations

import ast
import inspect
import sys
import types
from pathlib import Path

import megatron.core
import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.identity_op import IdentityOp

from megatron_moviegen.models.dit_layer_specs import get_dit_layer_local_spec, get_dit_layer_te_spec
from megatron_moviegen.models.local_layers import RMSNorm, SDPACoreAttention
from tests.harness import run_distributed

TE_EXTENSION = "megatron.core.extensions.transformer_engine"


class TENorm(RMSNorm):
    def __init__(self, config, hidden_size: int, eps: float = 1e-05):
        if config.normalization != "RMSNorm":  # the real TENorm picks te.LayerNorm or te.RMSNorm from this
            raise ValueError(f"TENorm: the DiT needs normalization='RMSNorm', got {config.normalization!r}")
        super().__init__(config, hidden_size, eps)


class TEColumnParallelLinear(ColumnParallelLinear):
    def __init__(self, input_size: int, output_size: int, *, config, init_method, gather_output: bool, bias: bool,
                 skip_bias_add: bool, is_expert: bool, skip_weight_param_allocation: bool = False,
                 tp_comm_buffer_name=None, tp_group=None, stride: int = 1):
        super().__init__(input_size, output_size, config=config, init_method=init_method, gather_output=gather_output,
                         bias=bias, skip_bias_add=skip_bias_add, is_expert=is_expert, stride=stride,
                         skip_weight_param_allocation=skip_weight_param_allocation,
                         tp_comm_buffer_name=tp_comm_buffer_name, tp_group=tp_group)


class TERowParallelLinear(RowParallelLinear):
    def __init__(self, input_size: int, output_size: int, *, config, init_method, bias: bool, input_is_parallel: bool,
                 skip_bias_add: bool, is_expert: bool, tp_comm_buffer_name=None, tp_group=None):
        super().__init__(input_size, output_size, config=config, init_method=init_method, bias=bias,
                         input_is_parallel=input_is_parallel, skip_bias_add=skip_bias_add, is_expert=is_expert,
                         tp_comm_buffer_name=tp_comm_buffer_name, tp_group=tp_group)


class TEDotProductAttention(SDPACoreAttention):
    def __init__(self, config, layer_number: int, attn_mask_type, attention_type: str, attention_dropout=None,
                 softmax_scale=None, k_channels=None, v_channels=None, num_splits=None, cp_comm_type="p2p",
                 pg_collection=None):
        if attention_type != "self":
            raise ValueError(f"TEDotProductAttention: the TE spec uses it for self-attention, got {attention_type!r}")
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout, softmax_scale,
                         cp_comm_type, pg_collection)


FAKES = (TENorm, TEColumnParallelLinear, TERowParallelLinear, TEDotProductAttention)


def fake_transformer_engine() -> types.ModuleType:
    module = types.ModuleType(TE_EXTENSION)
    for fake in FAKES:
        setattr(module, fake.__name__, fake)
    return module


@pytest.fixture
def fake_te(monkeypatch):
    monkeypatch.setitem(sys.modules, TE_EXTENSION, fake_transformer_engine())


def _real_signature(class_name: str) -> list[tuple[str, str, bool]]:
    """(name, kind, has default) of the real TE class's __init__ / __new__, from the installed source."""
    source = Path(megatron.core.__file__).parent / "extensions" / "transformer_engine.py"
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            method = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "__new__"))
            args = method.args
            positional = args.args[1:]  # without self / cls
            pos_defaults = [False] * (len(positional) - len(args.defaults)) + [True] * len(args.defaults)
            return ([(a.arg, "positional", d) for a, d in zip(positional, pos_defaults)]
                    + [(a.arg, "keyword", d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)])
    raise AssertionError(f"{class_name} not found in {source}")


def _fake_signature(fake: type) -> list[tuple[str, str, bool]]:
    kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional", inspect.Parameter.KEYWORD_ONLY: "keyword"}
    params = list(inspect.signature(fake.__init__).parameters.values())[1:]
    return [(p.name, kinds[p.kind], p.default is not inspect.Parameter.empty) for p in params]


@pytest.mark.parametrize("fake", FAKES, ids=[f.__name__ for f in FAKES])
def test_fakes_take_the_arguments_of_the_installed_te_classes(fake):
    assert _fake_signature(fake) == _real_signature(fake.__name__)


@pytest.mark.parametrize("qk_norm", [True, False])
def test_te_spec_puts_te_modules_in_every_slot_the_local_spec_fills(fake_te, qk_norm):
    te = get_dit_layer_te_spec(qk_norm).submodules
    local = get_dit_layer_local_spec(qk_norm).submodules
    assert (te.self_attn_norm, te.cross_attn_norm, te.mlp_norm) == (TENorm, TENorm, TENorm)
    self_attn, cross_attn, mlp = te.self_attention.submodules, te.cross_attention.submodules, te.mlp.submodules
    assert (self_attn.linear_qkv, self_attn.core_attention, self_attn.linear_proj) == (
        TEColumnParallelLinear, TEDotProductAttention, TERowParallelLinear)
    qk = TENorm if qk_norm else IdentityOp
    assert (self_attn.q_layernorm, self_attn.k_layernorm) == (qk, qk)
    # Cross-attention keys are the whole text on every CP rank: TE linears, torch SDPA with a padding mask.
    assert (cross_attn.linear_q, cross_attn.linear_kv, cross_attn.core_attention, cross_attn.linear_proj) == (
        TEColumnParallelLinear, TEColumnParallelLinear, SDPACoreAttention, TERowParallelLinear)
    assert (mlp.linear_fc1, mlp.linear_fc2) == (TEColumnParallelLinear, TERowParallelLinear)
    for name in ("self_attention", "cross_attention", "mlp"):
        te_spec, local_spec = getattr(te, name), getattr(local, name)
        assert (te_spec.module, te_spec.params) == (local_spec.module, local_spec.params)
        for slot, module in vars(te_spec.submodules).items():
            local_module = getattr(local_spec.submodules, slot)
            assert module is local_module is None or issubclass(module, local_module), (name, slot)


def _te_and_local_blocks(rank: int, world_size: int) -> dict:
    from megatron_moviegen.models.dit import MovieGenDiT, build_transformer_config
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed
    from megatron_moviegen.parallel.layout import SequenceLayout
    from megatron_moviegen.recipes import load_config
    from megatron_moviegen.runtime import Runtime
    from tests.parallel.dit_parity import make_microbatches, randomize_well_conditioned

    sys.modules[TE_EXTENSION] = fake_transformer_engine()  # a spawned process of its own
    cfg = load_config("tiny")
    runtime = Runtime.resolve()
    init_model_parallel(cfg.parallel, runtime)
    config = build_transformer_config(cfg.model, cfg.parallel, runtime)
    set_seed(5, runtime)
    layout = SequenceLayout()
    local = MovieGenDiT(config, cfg.model, get_dit_layer_local_spec(cfg.model.qk_norm), layout)
    te = MovieGenDiT(config, cfg.model, get_dit_layer_te_spec(cfg.model.qk_norm), layout)
    randomize_well_conditioned(local)
    te.load_state_dict(local.state_dict(), strict=True)
    batch = make_microbatches(cfg)[1]
    with torch.no_grad():
        outputs = [m(batch["latents"], batch["timesteps"], batch["conditioning"]) for m in (local, te)]
    classes = {name: type(module).__name__ for name, module in te.layers[0].named_modules()}
    destroy()
    return {"outputs": outputs, "classes": classes}


def test_a_dit_built_from_the_te_spec_has_the_local_parameter_names_and_outputs():
    result = run_distributed(_te_and_local_blocks, world_size=1)[0]
    local_out, te_out = result["outputs"]
    torch.testing.assert_close(te_out, local_out, rtol=0, atol=0)
    classes = result["classes"]
    assert classes["self_attention.linear_qkv"] == "TEColumnParallelLinear"
    assert classes["self_attention.q_layernorm"] == "TENorm"
    assert classes["cross_attention.core_attention"] == "SDPACoreAttention"
    assert classes["mlp.linear_fc2"] == "TERowParallelLinear"
