"""Command-line words as argparse must see them: a numeric option's negative value joined to the option."""

from __future__ import annotations

from typing import Sequence

__all__ = ["NUMERIC_OPTIONS", "join_negative_numbers"]

# Options whose value may be a negative number: `--edge-tolerance -1e3` must not read -1e3 as an option.
NUMERIC_OPTIONS = frozenset({"--edge-tolerance", "--threshold", "--min-area", "--window", "--threads", "--section",
                             "--seed", "--max-pixels", "--top", "--min-score", "--pixel-size", "--tolerance"})


def join_negative_numbers(argv: Sequence[str]) -> list[str]:
    """Rewrite `--opt -1e3` as `--opt=-1e3` for numeric options (argparse reads only `-10`-like values)."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            out.extend(items[i:])
            break
        if token in NUMERIC_OPTIONS and i + 1 < len(items) and items[i + 1].startswith("-"):
            try:
                float(items[i + 1])
            except ValueError:
                pass
            else:
                out.append(f"{token}={items[i + 1]}")
                i += 2
                continue
        out.append(token)
        i += 1
    return out
