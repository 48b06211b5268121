"""Writing files so that readers never see half of one, and JSON-lines records.

Every file segarena writes goes through `atomic_output`: the content is written to a
hidden sibling (`.name.tmp`), then renamed over the target. A crash, a kill or a full disk
leaves the old file (or none) and removes the temporary one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from segarena.errors import UserError


def temporary_sibling(path: Path) -> Path:
    """The hidden temporary name `atomic_output` writes `path` under."""
    return path.with_name(f".{path.name}.tmp")


def remove(path: Path) -> None:
    """Remove a file or a folder tree, if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it over `path` when the block succeeds.

    The temporary path may become a file or a folder. An existing folder at `path` is
    replaced whole (moved aside, then removed once the new one is in place). When the
    block raises, the temporary path is removed and the target is left as it was.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir() and any(path.iterdir()):
            old = path.with_name(f".{path.name}.old")
            remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        remove(tmp)
        if exc.errno == errno.ENOSPC:  # name the file being written, not its temporary
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    except BaseException:
        remove(tmp)
        raise


def existing_folder(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (what a new path would be created in)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def check_writable(folder: Path, what: str) -> None:
    """UserError starting with `what` (e.g. `--out PATH`) unless `folder` can be created
    (or is there) and written in: probed with a temporary folder, removed at once."""
    base = existing_folder(folder)
    if not base.is_dir():
        raise UserError(f"{what}: {base} is a file, expected a folder there")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".segarena-probe-", dir=base))
    except OSError as exc:
        raise UserError(f"{what}: cannot write in {base} ({exc.strerror})") from None


def check_free_space(folder: Path, need: int, what: str) -> None:
    """UserError starting with `what` unless `folder`'s disk has `need` bytes free."""
    base = existing_folder(folder)
    free = shutil.disk_usage(base).free
    if free < need:
        raise UserError(
            f"{what}: {free / 2**20:.1f} MiB free in {base}, expected at least "
            f"{need / 2**20:.1f} MiB for the first checkpoints; free some space or write elsewhere"
        )


def disk_full_message(exc: OSError) -> str:
    """One line for a full disk: the file being written and the space left beside it."""
    target = Path(exc.filename) if exc.filename else None
    folder = existing_folder(target.parent if target else Path.cwd())
    free = shutil.disk_usage(folder).free / 2**20
    return (
        f"{target or folder}: no space left on device ({free:.1f} MiB free in {folder}); "
        "free some space or write elsewhere"
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file and a rename."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (indented, non-JSON values as str) through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line (a torn last line is skipped by `read_jsonl`)."""
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when it does not exist). A last line that is
    not whole JSON (a run killed while appending it) is left out."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):  # a torn line can only be the last one
                raise
    return records


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's content, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on the lock file `path` (created with its folder, and left in
    place: waiters lock the same file), held for the block. Another process, or another
    block of this one, waits for it without a time limit: the holders are short steps
    (writing folds.csv, opening the MLflow store and claiming an experiment).

    The `filelock` package's FileLock: flock(2) where there is one, its own fallback where
    there is not; a killed holder's lock goes with its process."""
    from filelock import FileLock  # imported here: most commands never lock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


@contextmanager
def utf8_text(path: Path | str, what: str = "a CSV file") -> Iterator:
    """`path` opened as UTF-8 text (csv-ready: newline=""); a byte that is not UTF-8,
    met anywhere while the file is read, is a UserError naming the file and the byte."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            yield f
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); expected {what}") from None
