"""Recordings for the stand-in NVR: real short H.264 videos as a Hikvision NVR serves them.

A download from a Hikvision NVR is not a clean MP4: it is an MPEG program stream behind the
vendor's 40-byte ``IMKH`` media header (shared/notes/protocols.md §1 "Download"). These are
made with the same ffmpeg Photobot uses, tiny (160x120, 10 fps, a keyframe every second) so a
test can make dozens in a second or two, and cached by their parameters.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from photobot.cctv.video import find_ffmpeg

#: Hikvision's private media header: "IMKH" and 36 bytes of stream description.
IMKH_HEADER = b"IMKH" + bytes(36)


def make_recording(cache_dir: Path, seconds: float, *, label: str = "", size: str = "160x120",
                   fps: int = 10) -> Path:  # fmt: skip
    """A ``seconds`` long recording (IMKH header + MPEG-PS, H.264), made once per parameters.

    ``label`` varies the picture (a different test pattern phase), so segments differ."""
    key = hashlib.sha256(f"{seconds}|{label}|{size}|{fps}".encode()).hexdigest()[:16]
    path = cache_dir / f"rec-{key}.raw"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    ps = path.with_suffix(".ps")
    phase = int(hashlib.sha256(label.encode()).hexdigest(), 16) % 1000
    subprocess.run(
        [find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps},hue=h={phase}",
         "-t", f"{seconds:.3f}", "-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps),
         "-pix_fmt", "yuv420p", "-f", "mpeg", str(ps)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(IMKH_HEADER + ps.read_bytes())
    ps.unlink()
    tmp.rename(path)
    return path
