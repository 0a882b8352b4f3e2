"""Text normalisation shared by deduplication, decontamination and paraphrase checks."""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower case, punctuation and spacing collapsed to single spaces: what two copies of a question share."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def word_ngrams(text: str, n: int) -> set[str]:
    """The normalised text's n-word grams; a text shorter than n words is its one gram."""
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
