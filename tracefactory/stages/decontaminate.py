"""decontaminate: problems that share a word n-gram with a benchmark's questions are annotated.

As open-r1 does: questions normalised (case, punctuation, spacing), split in words, every n-gram
(`ngram` words, 8 by default) of a problem looked up among the n-grams of every benchmark question; a
question shorter than n words matches only a benchmark question equal to it. A hit is reason
`contaminated`, `match` = `<benchmark>:<item id>` of the first benchmark item with that n-gram. Numbers
are words here, so a perturbed copy of a benchmark question still shares its longer number-free
stretches with it — and is caught like its source.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import polars as pl

from tracefactory.config import REPO_ROOT, Benchmark, DecontaminateConfig
from tracefactory.errors import ConfigError
from tracefactory.rewriting.textnorm import word_ngrams
from tracefactory.stages.dedup import with_sources_removed
from tracefactory.store.report import StageReport
from tracefactory.store.schema import MATCH, QUESTION, REASON


def decontaminate(
    problems: pl.DataFrame, cfg: DecontaminateConfig, index: dict[str, str]
) -> tuple[pl.DataFrame, StageReport]:
    """Every problem, annotated: `reason` `contaminated` and `match` the benchmark item, or both null.
    `index`: {n-gram: "benchmark:item"} of the benchmarks' questions (`benchmark_index`)."""
    reason, match = [], []
    for q in problems[QUESTION].to_list():
        hit = next((index[g] for g in sorted(word_ngrams(q, cfg.ngram)) if g in index), None)
        reason.append("contaminated" if hit else None)
        match.append(hit)
    out = problems.with_columns(pl.Series(REASON, reason, pl.String), pl.Series(MATCH, match, pl.String))
    out = with_sources_removed(out)  # a variant of a benchmark question is not clean because its numbers differ
    return out, StageReport.from_reasons("decontaminate", "problems", out[REASON])


def _benchmark_path(b: Benchmark) -> Path:
    p = Path(b.path)
    return p if p.is_absolute() or p.exists() else REPO_ROOT / p


@lru_cache(maxsize=8)
def benchmark_index(benchmarks: tuple[Benchmark, ...], n: int) -> dict[str, str]:
    """{n-gram: "benchmark:item"} over every benchmark question (the first item wins): the input of the
    decontaminate stage, read once per process."""
    index: dict[str, str] = {}
    for b in benchmarks:
        path = _benchmark_path(b)
        if not path.is_file():
            raise ConfigError("decontaminate.benchmarks", b.path, "a JSONL file of benchmark questions")
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            rec = json.loads(line)
            if not isinstance(rec.get(b.field), str):
                raise ConfigError(f"decontaminate.benchmarks[{b.name}].field", b.field, f"a text field of {path}")
            item = f"{b.name}:{rec[b.id_field] if b.id_field else k}"
            for g in word_ngrams(rec[b.field], n):
                index.setdefault(g, item)
    return index
