"""dedup: duplicate problems (originals and rewritten variants) annotated, the first copy kept.

Exact: the same question once normalised (case, punctuation and spacing ignored). Near: MinHash-LSH
(datasketch) over word shingles, estimated Jaccard >= `near_threshold` — e.g. the same question with a
word changed or a clause reordered; a perturbed variant differs from its source in its numbers, which
the shingles keep, and a variant is never a near-duplicate of its own source (they are one family:
meant to be alike); two variants of different sources, or two originals, can be. The kept copy is
the first in problem order (originals come before their variants): the same whatever the machine.
A removed problem gets reason `duplicate` or `near_duplicate` and `match` = the id of the copy kept;
its variants go with it (`source_removed`).
"""

from __future__ import annotations

import polars as pl

from tracefactory.config import DedupConfig
from tracefactory.rewriting.textnorm import normalise
from tracefactory.store.report import StageReport
from tracefactory.store.schema import MATCH, PROBLEM_ID, QUESTION, REASON, REWRITE_OF


def _shingles(words: list[str], n: int) -> set[bytes]:
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


def _near(texts: list[str], families: list[str], cfg: DedupConfig) -> dict[int, int]:
    """{index: index of an earlier near-duplicate of another family} among `texts` (normalised,
    exact-unique); a variant and its source are one family: they are meant to be alike."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.near_threshold, num_perm=cfg.num_perm)
    out: dict[int, int] = {}
    for i, text in enumerate(texts):
        m = MinHash(num_perm=cfg.num_perm, seed=1)
        m.update_batch(list(_shingles(text.split(), cfg.shingle)))
        hits = [int(k) for k in lsh.query(m) if families[int(k)] != families[i]]
        if hits:
            out[i] = min(hits)  # the earliest kept copy among the candidates
        else:
            lsh.insert(str(i), m)
    return out


def dedup(problems: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, StageReport]:
    """Every problem, annotated: `reason` null (kept), `duplicate` or `near_duplicate`; `match` the kept id."""
    ids = problems[PROBLEM_ID].to_list()
    norm = [normalise(q) for q in problems[QUESTION].to_list()]
    first: dict[str, int] = {}
    reason: list[str | None] = [None] * len(ids)
    match: list[str | None] = [None] * len(ids)
    for i, text in enumerate(norm):
        if text in first:
            reason[i], match[i] = "duplicate", ids[first[text]]
        else:
            first[text] = i
    if cfg.near_threshold is not None:
        unique = list(first.values())
        of = problems[REWRITE_OF].to_list() if REWRITE_OF in problems.columns else [None] * len(ids)
        source = dict(zip(ids, of, strict=True))
        families = [root_of(ids[i], source) for i in unique]
        for j, k in _near([norm[i] for i in unique], families, cfg).items():
            reason[unique[j]], match[unique[j]] = "near_duplicate", ids[unique[k]]
    out = with_sources_removed(
        problems.with_columns(pl.Series(REASON, reason, pl.String), pl.Series(MATCH, match, pl.String))
    )
    return out, StageReport.from_reasons("dedup", "problems", out[REASON])


def root_of(pid: str, source: dict[str, str | None]) -> str:
    """The original a variant was made from (a paraphrase of a perturbed variant: through both)."""
    while source.get(pid):
        pid = source[pid]
    return pid


SOURCE_REMOVED = "source_removed"


def with_sources_removed(annotated: pl.DataFrame) -> pl.DataFrame:
    """A variant whose source problem is removed goes too (`source_removed`, `match` = its source): its
    source was a duplicate or a benchmark question, and it is a re-numbered copy of it."""
    if REWRITE_OF not in annotated.columns:
        return annotated
    while True:  # a paraphrase of a perturbed variant goes with the variant, which goes with its original
        gone = annotated.filter(pl.col(REASON).is_not_null())[PROBLEM_ID]
        orphan = pl.col(REASON).is_null() & pl.col(REWRITE_OF).is_in(gone.implode())
        if not annotated.select(orphan.any()).item():
            return annotated
        annotated = annotated.with_columns(
            pl.when(orphan).then(pl.lit(SOURCE_REMOVED)).otherwise(pl.col(REASON)).alias(REASON),
            pl.when(orphan).then(pl.col(REWRITE_OF)).otherwise(pl.col(MATCH)).alias(MATCH),
        )
