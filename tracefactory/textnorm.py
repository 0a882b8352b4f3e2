"""Text normalisation shared by deduplication, decontamination and paraphrase checks."""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing collapsed to single spaces: what two copies of a question share."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())
