"""Text to video: `python tools/generate.py --checkpoint EXPORT --tae TAE --prompt "..."` (see
megatron_moviegen/generate.py for every option; torchrun for TP/CP sampling)."""

import sys
import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_moviegen.generate import main  # noqa: E402  (after the filter: importing Megatron warns)

if __name__ == "__main__":
    sys.exit(main())
