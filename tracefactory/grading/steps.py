"""Split a chain of thought into steps — the unit a process reward model scores.

Modes: `blank_line` (paragraphs, the format Qwen2.5-Math-PRM expects), `line` (one step per
non-empty line), `regex` (split wherever a configured pattern matches). Whitespace-only pieces
are dropped, so the same text always gives the same steps.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

Mode = Literal["blank_line", "line", "regex"]
_SPLITS = {"blank_line": r"\n\s*\n", "line": r"\n"}


@lru_cache(maxsize=32)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def split_steps(text: str | None, mode: Mode = "line", pattern: str | None = None) -> list[str]:
    if not text:
        return []
    regex = _compile(pattern if mode == "regex" and pattern else _SPLITS.get(mode, r"\n"))
    return [piece.strip() for piece in regex.split(text) if piece.strip()]


def join_steps(steps: list[str], mode: Mode = "line") -> str:
    """The text of a step prefix, as the teacher would have written it (plus the separator)."""
    sep = "\n\n" if mode == "blank_line" else "\n"
    return "".join(s + sep for s in steps)
