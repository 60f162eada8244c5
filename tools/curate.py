"""Raw videos -> curated training manifests: `python tools/curate.py raw_videos/ --out curated/` (see
megatron_moviegen/curate.py for every option). Installed as the `moviegen-curate` command too."""

import sys

from megatron_moviegen.curate import main

if __name__ == "__main__":
    sys.exit(main())
