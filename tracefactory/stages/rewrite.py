"""rewrite: problems -> the same problems plus rewritten variants whose gold is known.

`perturb` (GSM-Symbolic style, see `tracefactory.perturb`): new numbers in the question, the gold
re-derived by re-running the solution's chain of equations. A variant gets its own id
(`<id>~perturb<k>`), `rewrite_of` (its source problem) and `rewrite_kind`; it has no solution of its
own, so it is never rewritten again. A problem that cannot be rewritten without guessing is kept as it
is, and the attempt is counted by its reason.
"""

from __future__ import annotations

import random

import polars as pl

from tracefactory.config import RewriteConfig
from tracefactory.perturb import Skip, perturb
from tracefactory.report import StageReport
from tracefactory.schema import ANSWER, PROBLEM_ID, QUESTION, REWRITE_KIND, REWRITE_OF, SOLUTION

NO_SOLUTION = "no_solution"


def _variants(row: dict, cfg: RewriteConfig, seen: set[str]) -> tuple[list[dict], list[str]]:
    """(variant rows, reasons of the attempts that made none) for one problem."""
    made, why = [], []
    for kind in cfg.kinds:
        for k in range(cfg.variants):
            if not row[SOLUTION]:
                why.append(NO_SOLUTION)
                continue
            rng = random.Random(f"{cfg.seed}:{kind}:{row[PROBLEM_ID]}:{k}")  # same variants whatever else is loaded
            try:
                p = perturb(row[QUESTION], row[SOLUTION], row[ANSWER], rng, avoid=seen)
            except Skip as reason:
                why.append(str(reason))
                continue
            seen.add(p.question)
            variant = {**row, PROBLEM_ID: f"{row[PROBLEM_ID]}~{kind}{k}", QUESTION: p.question, ANSWER: p.answer}
            made.append({**variant, SOLUTION: None, REWRITE_OF: row[PROBLEM_ID], REWRITE_KIND: kind})
    return made, why


def rewrite(problems: pl.DataFrame, cfg: RewriteConfig) -> tuple[pl.DataFrame, StageReport]:
    """Every problem, each followed by its variants. The report counts attempts (problems x kinds x
    variants): kept = variants made, dropped by the reason an attempt made none."""
    rows, reasons = [], []
    originals = problems.filter(pl.col(REWRITE_OF).is_null())
    seen = set(problems[QUESTION].to_list())
    for row in originals.iter_rows(named=True):
        made, why = _variants(row, cfg, seen)
        rows.extend(made)
        reasons.extend(why)
    variants = pl.DataFrame(rows, schema=problems.schema)
    out = pl.concat([problems, variants]) if len(variants) else problems
    attempts = len(originals) * len(cfg.kinds) * cfg.variants
    by = {}
    for r in reasons:
        by[r] = by.get(r, 0) + 1
    detail = {"problems_in": len(problems), "problems_out": len(out)}
    return out, StageReport("rewrite", "variants", attempts, len(variants), by, detail=detail)
