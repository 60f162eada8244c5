"""Fine-tune long-prompt MetaCLIP (77 -> 256 positions) on (image, long caption) pairs:
`python tools/finetune_long_clip.py --config long_clip_tiny --out DIR [section.field=value ...]`."""

import sys

from megatron_moviegen.text.long_clip import main

if __name__ == "__main__":
    sys.exit(main())
