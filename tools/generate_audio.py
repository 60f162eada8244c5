"""Audio for a video, or from text: `python tools/generate_audio.py --checkpoint EXPORT --audio-ae AE --video in.mp4
--prompt "..."` (see megatron_moviegen/generate_audio.py for every option; torchrun for TP/CP sampling). Installed
as the `generate-audio` command too."""

import sys
import warnings

warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")

from megatron_moviegen.generate_audio import main  # noqa: E402  (after the filter: importing Megatron warns)

if __name__ == "__main__":
    sys.exit(main())
