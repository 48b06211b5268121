"""The files of an audit folder (written by `segarena audit`, read by data.cleanse).

audit.json (the manifest: what was audited, with each mask's checksum), issues.csv (the
ranking), report.html and issues/<id>.npz (each image's flagged pixels).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from segarena.errors import UserError

MANIFEST = "audit.json"
RANKING = "issues.csv"
REPORT = "report.html"
ISSUES_DIR = "issues"


def mask_checksum(mask: np.ndarray) -> int:
    """CRC-32 of a mask's class ids: tells cleansing whether a mask changed since the audit."""
    return zlib.crc32(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())


def read_manifest(folder: Path) -> dict[str, Any]:
    """An audit folder's audit.json; UserError if the folder is not a finished audit."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{folder}: not an audit folder (no {MANIFEST}); run `segarena audit RUN_DIR` "
            "and point data.cleanse.audit at its output"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable audit manifest ({exc})") from None
