"""Where a pretrained folder is: a local path, or a Hugging Face Hub id read through the hub cache, optionally in a
subfolder (the diffusers layout: one repository with transformer/, vae/, text_encoder/, ...).

With HF_HUB_OFFLINE=1 only the local cache is read; a missing model is a FileNotFoundError naming what was looked
for, never a download attempt that hangs on a cluster without internet access.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def looks_local(path: str) -> bool:
    """An absolute, ./, ~/ or nested path is a folder, never a hub id ("org/name")."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or "\\" in path


def resolve_pretrained_folder(path: str | Path, subfolder: Optional[str] = None,
                              cache_dir: str | Path | None = None, what: str = "model") -> Path:
    """The local folder holding `path` (a folder, or a hub id fetched into / read from the hub cache), then
    `subfolder` inside it. `what` names the thing in errors."""
    local = Path(path).expanduser()
    if local.exists() or looks_local(str(path)):
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {str(folder)!r}: no such folder")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        root = snapshot_download(str(path), cache_dir=cache_dir, local_files_only=hub_offline(),
                                 allow_patterns=[f"{subfolder}/*"] if subfolder else None)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise FileNotFoundError(f"{what} {str(path)!r}: no such local folder, and not a Hub model this machine has "
                                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}; "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    folder = Path(root) / subfolder if subfolder else Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r}: the hub snapshot {root} has no {subfolder!r} folder")
    return folder
