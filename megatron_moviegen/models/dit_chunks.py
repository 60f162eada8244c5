"""Build the DiT for this rank's place in the parallel layout: one model chunk per virtual pipeline stage
(`parallel/ddp.py` wraps them in Megatron's DistributedDataParallel)."""

from __future__ import annotations

from megatron.core import parallel_state

from megatron_moviegen.models.dit import MovieGenDiT, build_transformer_config
from megatron_moviegen.models.dit_layer_specs import get_dit_layer_spec
from megatron_moviegen.parallel.layout import SequenceLayout
from megatron_moviegen.runtime import Runtime


def build_dit_chunks(cfg, runtime: Runtime, layout: SequenceLayout | None = None) -> list[MovieGenDiT]:
    """Model chunks of this rank (one unless virtual pipeline parallelism is on), on the runtime's device and
    dtype. Megatron's state must be set up; `layout` defaults to the one it implies."""
    layout = layout or SequenceLayout.from_parallel_state(cfg.parallel.sequence_parallel)
    transformer_config = build_transformer_config(cfg.model, cfg.parallel, runtime)
    spec = get_dit_layer_spec(runtime.transformer_impl, cfg.model.qk_norm)
    vpp = cfg.parallel.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vpp) if vpp else [None]:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=vpp is None, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=vpp is None, vp_stage=vp_stage)
        chunks.append(MovieGenDiT(transformer_config, cfg.model, spec, layout, pre, post, vp_stage))
    return [chunk.to(runtime.device) for chunk in chunks] if runtime.on_gpu else chunks  # CPU: built there
