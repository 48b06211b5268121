"""The pieces of segarena's error messages: did-you-mean hints and lists of examples."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

SHOWN = 5  # items listed in one message


def did_you_mean(name: str, choices: Iterable[str], n: int = 1, fold_case: bool = False) -> str:
    """'; did you mean 'x'?' (or 'x' or 'y') for the closest choices, '' when none is close."""
    choices = list(choices)
    if fold_case:
        by_lower = {c.lower(): c for c in choices}
        hints = [by_lower[h] for h in difflib.get_close_matches(name.lower(), by_lower, n=n)]
    else:
        hints = difflib.get_close_matches(name, choices, n=n)
    return f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""


def examples(items: Sequence[object], shown: int = SHOWN) -> str:
    """'a, b, c, ... (4 more)': the first items of a list, inline."""
    listed = ", ".join(str(item) for item in items[:shown])
    return listed + (f", ... ({len(items) - shown} more)" if len(items) > shown else "")


def problem_lines(problems: Sequence[str], shown: int = SHOWN) -> str:
    """The first problems, one per indented line, then '... and N more'."""
    listed = "\n  ".join(problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more" if len(problems) > shown else ""
    return listed + more
