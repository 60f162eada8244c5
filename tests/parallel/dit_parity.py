"""One training step of the tiny DiT through Megatron's schedules, DDP and finalize_model_grads, on any layout.

`run_step(rank, world, overrides, reference)` returns the whole (TP-gathered, globally named) gradients of
the parameters this rank holds, the full velocity predictions of the last pipeline stage, and the whole
weights used. With `reference=None` it randomises the weights itself (it is then the single-process
reference); otherwise it loads `reference["weights"]` into its shards.
"""

from __future__ import annotations

from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_moviegen.checkpoints.tp_shards import gather_full_tensors, load_full_state_dict
from megatron_moviegen.conditioning import Conditioning, Images, Infill, Tokens
from megatron_moviegen.models.embeddings import patchify_latents, unpatchify_tokens
from megatron_moviegen.models.dit_chunks import build_dit_chunks
from megatron_moviegen.parallel.ddp import wrap_ddp
from megatron_moviegen.parallel.initialize import destroy, init_model_parallel, set_seed
from megatron_moviegen.recipes import load_config
from megatron_moviegen.runtime import Runtime

NUM_MICROBATCHES = 2
LATENT_SHAPE = (1, 16, 2, 8, 8)  # per microbatch: 2 x 4 x 4 = 32 tokens
AUDIO_LATENT_SHAPE = (1, 128, 8, 1, 1)  # the audio DiT: 8 latent frames, one token each


def latent_shape(cfg) -> tuple[int, ...]:
    return AUDIO_LATENT_SHAPE if cfg.data.audio is not None else LATENT_SHAPE


def make_microbatches(cfg, seed: int = 7) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    shape = latent_shape(cfg)
    batches = []
    for index in range(NUM_MICROBATCHES):
        tokens = {n: Tokens(torch.randn(1, e.max_length, e.width, generator=gen),
                            torch.rand(1, e.max_length, generator=gen) > 0.3)
                  for n, e in cfg.model.text_encoders.items()}
        if index == 1 and "byt5" in tokens:
            tokens["byt5"].mask[:] = False  # a prompt without quoted text: one encoder fully masked
        images = {}
        for n, e in cfg.model.extra_context.items():  # given in microbatch 0; none (dropped) in 1
            if e.encoder is not None:  # a trainable tower in the model reads pixels
                size = e.encoder.image_size
                images[n] = Images(torch.randn(1, 3, size, size, generator=gen), torch.tensor([index == 0]))
            else:
                tokens[n] = Tokens(torch.randn(1, e.max_length, e.width, generator=gen),
                                   torch.full((1, e.max_length), index == 0))
        channels = cfg.model.condition_channels  # the upsampler's low-res latents, an edit's source, video features
        infill = None
        if cfg.model.infill:  # audio: frames 0-2 known in microbatch 0, none in 1
            known = (torch.arange(shape[2]) < 3)[None] & (index == 0)
            infill = Infill(torch.randn(*shape, generator=gen), known)
        batches.append(dict(
            latents=torch.randn(*shape, generator=gen),
            timesteps=torch.rand(1, generator=gen),
            conditioning=Conditioning(tokens, channels=torch.randn(1, channels, *shape[2:], generator=gen)
                                      if channels else None,
                                      task=torch.tensor([index % cfg.model.num_tasks]) if cfg.model.num_tasks else None,
                                      images=images, infill=infill),
            weight=torch.randn(*shape, generator=gen),
        ))
    return batches


@torch.no_grad()
def randomize_well_conditioned(model: torch.nn.Module) -> None:
    """Random weights everywhere (the zero-initialised adaLN would hide bugs), scaled so that activations and
    attention logits stay O(1) and float32 gradients are not dominated by rounding."""
    for name, param in model.named_parameters():
        if param.dim() == 1 and "norm" in name:
            param.copy_(1.0 + 0.1 * torch.randn_like(param))
        elif param.dim() == 1:
            param.normal_(0.0, 0.1)
        else:
            param.normal_(0.0, 0.5 / param[0].numel() ** 0.5)


def run_step(rank: int, world_size: int, overrides: list[str], reference: dict | None, recipe: str = "tiny",
             precision: str = "fp32") -> dict:
    cfg = load_config(recipe, overrides)
    runtime = Runtime.resolve(precision)
    init_model_parallel(cfg.parallel, runtime)
    set_seed(1234, runtime)
    chunks = build_dit_chunks(cfg, runtime)
    if reference is None:
        randomize_well_conditioned(chunks[0])
        weights = gather_full_tensors(chunks[0], dict(chunks[0].named_parameters()))
    else:
        weights = reference["weights"]
        for chunk in chunks:
            load_full_state_dict(chunk, weights, chunk.layer_offset)

    model = wrap_ddp(chunks, use_distributed_optimizer=False)
    config = chunks[0].config
    config.finalize_model_grads_func = finalize_model_grads
    config.no_sync_func = model[0].no_sync if len(model) == 1 else [m.no_sync for m in model]
    for chunk in model:
        chunk.zero_grad_buffer()

    outputs = []

    def loss_func(dit, batch, output):
        # sum(v * w) over this rank's tokens. Megatron's schedule multiplies a 2-tuple loss by the CP size,
        # which undoes DDP's averaging over DP x CP: the CP ranks' partial sums add up to the whole.
        patch = tuple(cfg.model.patch_size)
        loss = (output * dit.layout.split(patchify_latents(batch["weight"], patch))).sum()
        grid = dit.token_grid(batch["latents"].shape)
        outputs.append(unpatchify_tokens(dit.layout.gather(output.detach()), grid, patch))
        return loss, {"loss": loss.detach()}

    def forward_step(data_iterator, ddp_chunk):
        batch = next(data_iterator)
        dit = ddp_chunk.module
        output = ddp_chunk(batch["latents"], batch["timesteps"], batch["conditioning"])
        return output, partial(loss_func, dit, batch)

    batches = make_microbatches(cfg)
    iterators = [iter(batches) for _ in model] if len(model) > 1 else iter(batches)
    tokens = chunks[0].tokens_per_sample(latent_shape(cfg))
    get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iterators, model=model, num_microbatches=NUM_MICROBATCHES,
        seq_length=tokens, micro_batch_size=1, forward_only=False,
    )
    grads = {}
    for chunk in chunks:
        local = {name: param.main_grad for name, param in chunk.named_parameters() if param.requires_grad}
        grads.update(gather_full_tensors(chunk, local, chunk.layer_offset))
    is_last = parallel_state.is_pipeline_last_stage()
    cp_comm_type = chunks[0].layers[0].self_attention.core_attention.cp_comm_type
    destroy()
    return {"grads": grads, "outputs": outputs if is_last else None, "weights": weights, "cp_comm_type": cp_comm_type}
