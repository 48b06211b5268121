"""SubmissionWriter: streams masks into a temporary file (or folder), validates it with
`segarena.submission.check.validate_submission`, and only then renames it to `out`: a file
at `out` is always one that passed validation, and a failure leaves nothing behind."""

from __future__ import annotations

import csv
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image

from segarena.errors import UserError
from segarena.submission.check import validate_submission
from segarena.submission.codecs import (
    FORMATS,
    HEADERS,
    Size,
    encode_pixels,
    png_path,
    read_sample,
    rle_rows,
)
from segarena.util.files import atomic_output


class SubmissionWriter:
    """Streams masks into a submission; on a clean exit of the `with` block it validates the
    result against the sample (or the ids written) and moves it to `out`."""

    def __init__(
        self, fmt: str, out: Path, num_classes: int, sample: Path | None = None, size: Size = None
    ):
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
        if fmt == "png" and num_classes > 256:
            raise UserError(f"--format png: {num_classes} classes do not fit uint8 PNG masks")
        if fmt == "png" and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"--out {out}: exists and is not an empty folder; give a new one")
        self.fmt, self.out, self.num_classes = fmt, Path(out), num_classes
        self.sample, self.size = sample, size
        self.sizes: dict[str, tuple[int, int]] = {}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._output = ExitStack()
        self.tmp = self._output.enter_context(atomic_output(self.out))
        if fmt == "png":
            self.tmp.mkdir()
        else:
            self.file = open(self.tmp, "w", newline="")
            self.rows = csv.writer(self.file)
            header = read_sample(sample)[0][:2] if sample else HEADERS[fmt]
            self.rows.writerow(header)

    def add(self, image_id: str, mask: np.ndarray) -> None:
        """Write the class-id mask [H, W] of one image."""
        self.sizes[image_id] = (int(mask.shape[0]), int(mask.shape[1]))
        if self.fmt == "csv":
            self.rows.writerow([image_id, encode_pixels(mask)])
        elif self.fmt == "rle":
            self.rows.writerows(rle_rows(image_id, mask, self.num_classes))
        else:
            path = png_path(self.tmp, image_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(path)  # 2-D uint8: mode L

    def __enter__(self) -> SubmissionWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.fmt != "png":
            self.file.close()
        if kind is None:
            try:
                sizes = self.size or self.sizes
                validate_submission(self.tmp, self.sample, self.num_classes, sizes, self.fmt)
            except BaseException:
                if not self._output.__exit__(*sys.exc_info()):  # removes the temporary file
                    raise
        # renames the validated file into place, or removes it when the block raised
        self._output.__exit__(kind, value, traceback)
