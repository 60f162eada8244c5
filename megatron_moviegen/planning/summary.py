"""Build the DiT on the meta device (no memory) and count its parameters, tokens and FLOPs."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.distributed as dist

from megatron_moviegen.recipes import MovieGenConfig
from megatron_moviegen.parallel.config import ParallelConfig
from megatron_moviegen.planning.flops import dit_training_flops, latent_shape, num_tokens

COMPONENTS = OrderedDict(
    patch_embed="patch embedding (3D conv)",
    position_embedding="position tables (t, h, w)",
    time_embedding="flow-time MLP + shared adaLN",
    context_projection="context projections (+ vision tower)",
    layers="transformer blocks",
    unpatchify="final adaLN + projection",
)


def _build_on_meta(cfg: MovieGenConfig):
    from megatron_moviegen.models.dit_chunks import build_dit_chunks
    from megatron_moviegen.parallel.initialize import destroy, init_model_parallel
    from megatron_moviegen.runtime import Runtime

    single = MovieGenConfig(name=cfg.name, model=cfg.model, parallel=ParallelConfig(use_distributed_optimizer=False))
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        runtime = Runtime.resolve("bf16", "local", distributed_optimizer=False, cuda=False)
        init_model_parallel(single.parallel, runtime)
        with torch.device("meta"):
            model = build_dit_chunks(single, runtime)[0]
        destroy()
        return model
    finally:
        if own_group:
            dist.destroy_process_group()


def sample_tokens(cfg: MovieGenConfig, frames: int, height: int, width: int) -> tuple[int, str]:
    """(tokens, a description) of the sample a recipe is planned for: a frames x height x width video, or an audio
    model's (data.audio) longest window, one token per latent frame."""
    audio = cfg.data.audio
    if audio is not None:
        tokens = max(audio.latent_frames())
        return tokens, f"audio {tokens / audio.latent_rate:g} s at {audio.sample_rate} Hz"
    return num_tokens(cfg.model, frames, height, width), f"{frames}x{height}x{width}"


def summarize(cfg: MovieGenConfig, frames: int, height: int, width: int) -> dict:
    """Parameter counts per component, the token count of a (frames, height, width) video and its FLOPs; for an
    audio model (data.audio), of its longest window instead (one token per latent frame)."""
    model = _build_on_meta(cfg)
    per_component = {name: 0 for name in COMPONENTS}
    for name, param in model.named_parameters():
        per_component[name.split(".", 1)[0]] += param.numel()
    per_layer = sum(p.numel() for p in model.layers[0].parameters())
    tokens, _ = sample_tokens(cfg, frames, height, width)
    audio = cfg.data.audio
    if audio is not None:
        sample = {"audio": {"seconds": tokens / audio.latent_rate, "sample_rate": audio.sample_rate},
                  "latent_shape": [cfg.model.latent_channels, tokens, 1, 1]}
    else:
        sample = {"video": {"frames": frames, "height": height, "width": width},
                  "latent_shape": list(latent_shape(frames, height, width, cfg.model.latent_channels))}
    flops = dit_training_flops(cfg.model, tokens)
    return {
        "recipe": cfg.name,
        "params_total": sum(per_component.values()),
        "params_per_component": per_component,
        "params_per_layer": per_layer,
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "lora_rank": cfg.model.lora.rank,
        "num_layers": cfg.model.num_layers,
        "hidden_size": cfg.model.hidden_size,
        "ffn_hidden_size": cfg.model.ffn_hidden_size,
        "num_attention_heads": cfg.model.num_attention_heads,
        **sample,
        "tokens": tokens,
        "text_tokens": cfg.model.context_length,
        "flops_per_sample": flops.total,
        "flops_matmul": flops.matmul,
        "flops_attention": flops.attention,
        "attention_flop_fraction": flops.attention_fraction,
    }


def format_table(summary: dict) -> str:
    rows = [f"Movie Gen DiT — recipe {summary['recipe']}", ""]
    rows.append(f"{'component':<40}{'parameters':>18}")
    rows.append("-" * 58)
    for name, label in COMPONENTS.items():
        rows.append(f"{label:<40}{summary['params_per_component'][name]:>18,}")
    rows.append("-" * 58)
    rows.append(f"{'total':<40}{summary['params_total']:>18,}  ({summary['params_total'] / 1e9:.2f} B)")
    rows.append(f"{'per block':<40}{summary['params_per_layer']:>18,}")
    if summary["lora_rank"]:
        trainable = summary["params_trainable"]
        rows.append(f"{'trainable: LoRA rank ' + str(summary['lora_rank']) + ' adapters':<40}{trainable:>18,}  "
                    f"({trainable / summary['params_total']:.2%})")
    if "audio" in summary:
        a = summary["audio"]
        sample = f"audio {a['seconds']:g} s at {a['sample_rate']} Hz"
    else:
        v = summary["video"]
        sample = f"video {v['frames']}x{v['height']}x{v['width']}"
    rows += [
        "",
        f"blocks {summary['num_layers']}, width {summary['hidden_size']}, FFN {summary['ffn_hidden_size']}, "
        f"heads {summary['num_attention_heads']}",
        f"{sample} -> latent {tuple(summary['latent_shape'])} -> "
        f"{summary['tokens']:,} tokens (+{summary['text_tokens']} text tokens)",
        f"training FLOPs per sample (fwd+bwd): {summary['flops_per_sample']:.3e} "
        f"(attention {summary['attention_flop_fraction']:.1%})",
    ]
    return "\n".join(rows)
