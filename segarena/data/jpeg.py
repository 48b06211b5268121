"""A cheap check that a JPEG file is whole, which neither PIL nor OpenCV makes.

PIL's `verify()` checks PNG chunks only, and OpenCV decodes a JPEG cut short without an
error: the missing rows come out grey. A whole JPEG ends with the end-of-image marker
(FF D9); some writers pad a few bytes after it, so the marker is looked for in the last
few KB rather than at the very end. Entropy-coded data never holds FF D9 (a data byte FF
is always followed by 00), so a cut file has none there.
"""

from __future__ import annotations

from pathlib import Path

SOI, EOI = b"\xff\xd8", b"\xff\xd9"  # start and end of image
TAIL = 4096  # bytes read from the end: the marker and any padding writers put after it
TRUNCATED = "truncated JPEG: no end-of-image marker"


def truncated_jpeg(path: Path) -> bool:
    """True when `path` is a JPEG (by its first bytes, whatever its name) that lacks the
    end-of-image marker near its end: a file cut short. Other files, and files that cannot
    be opened (the decoder names those), give False."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != SOI:
                return False
            size = f.seek(0, 2)
            f.seek(max(2, size - TAIL))
            return EOI not in f.read()
    except OSError:
        return False
