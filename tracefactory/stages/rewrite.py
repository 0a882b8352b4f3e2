"""rewrite: problems -> the same problems plus rewritten variants whose gold is known.

`perturb` (GSM-Symbolic style, see `tracefactory.rewriting.perturb`): new numbers in the question, the gold
re-derived by re-running the solution's chain of equations. `paraphrase` (see `tracefactory.rewriting.paraphrase`):
the teacher rewords the question (one call for the batch); a candidate is kept only when the teacher's
own rollouts on it reach the original's gold (a perturbed variant's: the re-derived one) often enough
(one more call). A variant gets its own id (`<id>~<kind><k>`), `rewrite_of` (its source problem) and
`rewrite_kind`; it has no solution of its own, so it is not perturbed again. A problem that cannot be
rewritten without guessing is kept as it is, and the attempt is counted by its reason.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import polars as pl

from tracefactory.backends.base import Teacher
from tracefactory.config import PromptConfig, RewriteConfig, SamplingConfig
from tracefactory.rewriting import paraphrase
from tracefactory.rewriting.perturb import Skip, perturb
from tracefactory.stages.dedup import root_of
from tracefactory.store.report import StageReport
from tracefactory.store.schema import ANSWER, PROBLEM_ID, QUESTION, REWRITE_KIND, REWRITE_OF, SOLUTION

NO_SOLUTION = "no_solution"
NOT_ANSWER_PRESERVING = "not_answer_preserving"
NO_TEACHER = "no_teacher"
NO_GOLD = "no_gold"


@dataclass(frozen=True)
class Paraphraser:
    """What the paraphrase kind needs: the teacher, a grader, and the run's prompt and sampling."""

    teacher: Teacher
    judge: paraphrase.Judge
    prompt: PromptConfig
    sampling: SamplingConfig


def _variant(row: dict, kind: str, k: int, question: str, answer: str) -> dict:
    variant = {**row, PROBLEM_ID: f"{row[PROBLEM_ID]}~{kind}{k}", QUESTION: question, ANSWER: answer}
    return {**variant, SOLUTION: None, REWRITE_OF: row[PROBLEM_ID], REWRITE_KIND: kind}


def _perturbed(rows: list[dict], cfg: RewriteConfig, seen: set[str]) -> tuple[list[dict], list[str]]:
    made, why = [], []
    for row in rows:
        for k in range(cfg.variants):
            if not row[SOLUTION]:
                why.append(NO_SOLUTION)
                continue
            rng = random.Random(f"{cfg.seed}:perturb:{row[PROBLEM_ID]}:{k}")  # the same whatever else is loaded
            try:
                p = perturb(row[QUESTION], row[SOLUTION], row[ANSWER], rng, avoid=seen)
            except Skip as reason:
                why.append(str(reason))
                continue
            seen.add(p.question)
            made.append(_variant(row, "perturb", k, p.question, p.answer))
    return made, why


def _seed(cfg: RewriteConfig, pid: str, k: int, what: str) -> int:
    digest = hashlib.sha256(f"{cfg.seed}:{what}:{pid}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 2**16)


def _paraphrased(rows: list[dict], cfg: RewriteConfig, p: Paraphraser | None) -> tuple[list[dict], list[str]]:
    attempts = [(row, k) for row in rows for k in range(cfg.variants)]
    if p is None:
        return [], [NO_TEACHER] * len(attempts)
    s = p.sampling
    gen = SamplingConfig(n=1, temperature=max(s.temperature, 0.7), top_p=s.top_p, max_tokens=cfg.paraphrase_max_tokens)
    seeds = [_seed(cfg, row[PROBLEM_ID], k, "paraphrase") for row, k in attempts]
    found = paraphrase.candidates(p.teacher, [row[QUESTION] for row, _ in attempts], gen, seeds)
    ok = [(a, text) for a, (text, _) in zip(attempts, found, strict=True) if text is not None]
    check = SamplingConfig(
        n=cfg.paraphrase_verify_n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed
    )
    vseeds = [_seed(cfg, row[PROBLEM_ID], k, "verify") for (row, k), _ in ok]
    rates = paraphrase.verify(
        p.teacher, p.judge, [t for _, t in ok], [row[ANSWER] for (row, _), _ in ok], p.prompt, check, vseeds
    )
    why = [reason for text, reason in found if text is None]
    made = []
    for ((row, k), text), rate in zip(ok, rates, strict=True):
        if rate >= cfg.paraphrase_min_pass_rate:
            made.append(_variant(row, "paraphrase", k, text, row[ANSWER]))
        else:
            why.append(NOT_ANSWER_PRESERVING)
    return made, why


def rewrite(
    problems: pl.DataFrame, cfg: RewriteConfig, paraphraser: Paraphraser | None = None
) -> tuple[pl.DataFrame, StageReport]:
    """Every problem, followed by its variants. Kinds run in the configured order, and a paraphrase after a
    perturbation rewords the perturbed variants too (gated on their re-derived gold; `rewrite_of` is the
    perturbed variant). The report counts attempts (problems x variants, per kind): kept = variants made,
    dropped by the reason an attempt made none."""
    originals = problems.filter(pl.col(REWRITE_OF).is_null())
    rows = list(originals.iter_rows(named=True))
    goldless = sum(r[ANSWER] is None for r in rows)  # no gold to re-derive, or to gate a paraphrase on
    rows = [r for r in rows if r[ANSWER] is not None]
    seen = set(problems[QUESTION].to_list())
    made: list[dict] = []
    reasons: list[str] = [NO_GOLD] * (goldless * cfg.variants * len(cfg.kinds))
    attempts = len(reasons)
    for kind in cfg.kinds:
        sources = rows if kind == "perturb" else rows + [v for v in made if v[REWRITE_KIND] == "perturb"]
        got, why = _perturbed(sources, cfg, seen) if kind == "perturb" else _paraphrased(sources, cfg, paraphraser)
        attempts += len(sources) * cfg.variants
        made.extend(got)
        reasons.extend(why)
    order = {pid: i for i, pid in enumerate(problems[PROBLEM_ID].to_list())}
    source = {v[PROBLEM_ID]: v[REWRITE_OF] for v in made}
    made.sort(key=lambda v: order[root_of(v[PROBLEM_ID], source)])  # each problem's variants right after it, by kind
    variants = pl.DataFrame(made, schema=problems.schema)
    out = pl.concat([problems, variants]) if len(variants) else problems
    by: dict[str, int] = {}
    for r in reasons:
        by[r] = by.get(r, 0) + 1
    detail = {"problems_in": len(problems), "problems_out": len(out)}
    return out, StageReport("rewrite", "variants", attempts, len(variants), by, detail=detail)
