"""Train the TAE: `python tools/train_tae.py --config tae_tiny [section.field=value ...]` (torchrun for DDP)."""

import sys

from megatron_moviegen.training.train_tae import main

if __name__ == "__main__":
    sys.exit(main())
