"""Per-channel latent statistics into a TAE folder (logic: megatron_moviegen.data.latent_stats).

    python tools/preencode_latents.py --tae runs/tae/checkpoint --out data/raw ...     # raw latents
    python tools/latent_stats.py --shards data/raw --tae runs/tae/checkpoint --out runs/tae_normalised
    python tools/preencode_latents.py --tae runs/tae_normalised --out data/latents ...  # (z - shift) / scale

Generation with `--tae runs/tae_normalised` decodes z * scale + shift. For audio shards (data.audio recipes) give
the audio autoencoder instead: `--audio-ae runs/audio_ae/checkpoint --out runs/audio_ae_normalised`.
"""

from __future__ import annotations

import argparse
import json

from megatron_moviegen.data.latent_stats import latent_stats, write_with_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="shards pre-encoded with the TAE's raw latents")
    encoder = parser.add_mutually_exclusive_group(required=True)
    encoder.add_argument("--tae", help="the TAE folder those shards were encoded with")
    encoder.add_argument("--audio-ae", help="the audio autoencoder folder those (audio) shards were encoded with")
    parser.add_argument("--out", required=True, help="folder to write the autoencoder to, with latent_shift / "
                                                     "latent_scale")
    args = parser.parse_args(argv)
    shift, scale = latent_stats(args.shards)
    if args.tae is not None:
        from megatron_moviegen.models.tae import TAE as autoencoder_class
    else:
        from megatron_moviegen.models.audio_ae import AudioAutoencoder as autoencoder_class
    write_with_stats(autoencoder_class, args.tae or args.audio_ae, args.out, shift, scale)
    print(json.dumps({"out": args.out, "latent_shift": [round(v, 4) for v in shift],
                      "latent_scale": [round(v, 4) for v in scale]}))


if __name__ == "__main__":
    main()
