"""decontaminate: problems that share a word n-gram with a benchmark's questions are annotated.

As open-r1 does: questions normalised (case, punctuation, spacing), split in words, every n-gram
(`ngram` words, 8 by default) of a problem looked up among the n-grams of every benchmark question; a
question shorter than n words matches only a benchmark question equal to it. A hit is reason
`contaminated`, `match` = `<benchmark>:<item id>` of the first benchmark item with that n-gram. Numbers
are words here, so a perturbed copy of a benchmark question still shares its longer number-free
stretches with it — and is caught like its source.
"""

from __future__ import annotations

import polars as pl

from tracefactory.config import DecontaminateConfig
from tracefactory.report import StageReport
from tracefactory.schema import MATCH, QUESTION, REASON
from tracefactory.stages.dedup import with_sources_removed
from tracefactory.textnorm import word_ngrams


def decontaminate(
    problems: pl.DataFrame, cfg: DecontaminateConfig, index: dict[str, str]
) -> tuple[pl.DataFrame, StageReport]:
    """Every problem, annotated: `reason` `contaminated` and `match` the benchmark item, or both null.
    `index`: {n-gram: "benchmark:item"} of the benchmarks' questions (`sources.benchmark_index`)."""
    reason, match = [], []
    for q in problems[QUESTION].to_list():
        hit = next((index[g] for g in sorted(word_ngrams(q, cfg.ngram)) if g in index), None)
        reason.append("contaminated" if hit else None)
        match.append(hit)
    out = problems.with_columns(pl.Series(REASON, reason, pl.String), pl.Series(MATCH, match, pl.String))
    out = with_sources_removed(out)  # a variant of a benchmark question is not clean because its numbers differ
    return out, StageReport.from_reasons("decontaminate", "problems", out[REASON])
