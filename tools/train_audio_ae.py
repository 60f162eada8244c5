"""Train the audio autoencoder: `python tools/train_audio_ae.py --config audio_ae_tiny [section.field=value ...]`
(torchrun for DDP / ZeRO-2)."""

import sys

from megatron_moviegen.training.train_audio_ae import main

if __name__ == "__main__":
    sys.exit(main())
