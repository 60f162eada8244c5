"""Where a clip's caption comes from. `SidecarCaptions`: text files beside the video, `<video stem>.<clip
number>.txt` for one clip, else `<video stem>.txt` for all of its clips; a clip with neither has no caption
(captioner "none") and is removed by the stages (pre-encoding needs a caption)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


class SidecarCaptions:
    name = "sidecar"

    def caption(self, video: Path, clip_number: int) -> tuple[Optional[str], dict]:
        """(caption or None, the captioner record: which file it came from)."""
        for candidate in (video.with_name(f"{video.stem}.{clip_number}.txt"), video.with_suffix(".txt")):
            if candidate.is_file():
                text = candidate.read_text(encoding="utf-8", errors="replace").strip()
                if text:
                    return text, {"name": self.name, "file": candidate.name}
        return None, {"name": "none"}
