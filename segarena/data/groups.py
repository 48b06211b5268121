"""Group keys of samples for grouped folds: split.group_regex on the ids, or a csv
(split.group_csv, split.group_column) that maps each id to its group."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from segarena.config import SplitConfig
from segarena.errors import UserError
from segarena.util.text import examples


def group_ids(ids: list[str], split: SplitConfig | None) -> list[str]:
    """Each id's group: by regex or csv when the split names one, else the id itself."""
    if split is None or not (split.group_regex or split.group_csv):
        return list(ids)
    if split.group_regex and split.group_csv:
        raise UserError("split.group_regex and split.group_csv are both set; keep one of them")
    if split.group_regex:
        return regex_groups(ids, split.group_regex)
    return csv_groups(ids, Path(split.group_csv), split.group_column)


def regex_groups(ids: list[str], regex: str) -> list[str]:
    pattern = re.compile(regex)
    groups, unmatched = [], []
    for sample_id in ids:
        match = pattern.search(sample_id)
        group = None if match is None else match.group(1 if pattern.groups else 0)
        if group is None:
            unmatched.append(sample_id)
        groups.append(group)
    if unmatched:
        raise UserError(
            f"split.group_regex {regex!r} does not match {len(unmatched)} sample "
            f"id(s): {examples(unmatched)}"
        )
    return groups


def csv_groups(ids: list[str], path: Path, column: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"split.group_csv: file {path} not found (relative to {Path.cwd()})")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"id", column} <= set(reader.fieldnames or []):
                raise UserError(
                    f"split.group_csv: {path} has columns {reader.fieldnames}; "
                    f"expected 'id' and {column!r} (split.group_column)"
                )
            group_of = {row["id"]: row[column] for row in reader}
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UserError(f"split.group_csv: {path} is not a readable csv ({exc})") from None
    missing = [i for i in ids if i not in group_of]
    if missing:
        raise UserError(
            f"split.group_csv: {path} has no group for {len(missing)} sample id(s): "
            f"{examples(missing)}"
        )
    return [group_of[i] for i in ids]
