"""budget: after each rollout round, which problems get another round (`sampling.budget`).

Each problem's tally is (samples drawn, correct traces, teacher tokens spent). After a round a problem stops:

- `settled`: it has its `select.keep` correct traces and the Wilson interval of its pass rate lies inside one
  difficulty bucket — more samples would change neither its traces nor its bucket;
- `stable`: it has its traces, and the chance that the next round moves its difficulty bucket (the bucket of
  its pass rate, not of the interval) is below `budget.stable` (off at 0);
- `max_samples`: it has drawn `budget.max`;
- `hopeless`: no correct trace yet, and the chance that the next round finds one is below `budget.hopeless`.
  The chance comes from the pass rates of the run's own problems: a beta prior fitted to the tallies by the
  method of moments (an empirical-Bayes prior: a teacher that solves half of a run's problems all the time and
  never the other half makes 0 of 4 much more telling than one whose problems all sit near 0.3), one per source
  level where the source has levels (MATH's, the demo's), else one for the run;
- `run_budget`: the run's `budget.run_tokens` is spent, or the next round of this problem would not fit in it.

The others go on, most promising first when the run budget cannot take them all: the problems still short of
their traces by the chance that the next round brings them there, then those that only need their bucket
settled. Every decision is a function of the committed samples' grades, so a resumed run decides the same.
"""

from __future__ import annotations

import math

import polars as pl

from tracefactory.config import BudgetConfig, DifficultyConfig
from tracefactory.stages.difficulty import bucket, wilson
from tracefactory.store.schema import (
    CORRECT,
    COT_TOKENS,
    LEVEL,
    N_CORRECT,
    PROBLEM_ID,
    ROUNDS,
    SAMPLES_DRAWN,
    STOP_REASON,
    TEACHER_TOKENS,
)

SETTLED = "settled"
STABLE = "stable"
MAX_SAMPLES = "max_samples"
HOPELESS = "hopeless"
HAS_GOLD = "_has_gold"  # a tally column: false for a gold-less problem drawing votes for a pseudo-gold
RUN_BUDGET = "run_budget"
FIXED = "fixed"  # the fixed policy: every problem drew sampling.n in one round

Prior = tuple[float, float]  # beta(a, b) over a problem's pass rate


def settled(k: int, n: int, cfg: DifficultyConfig) -> bool:
    """Whether the Wilson interval of k/n lies inside one difficulty bucket (never for k = 0: unsolved)."""
    if k == 0:
        return False
    low, high = wilson(k, n, cfg.z)
    return bucket(low, 1, cfg) == bucket(high, 1, cfg)


def fit_prior(ks: list[int], ns: list[int]) -> Prior:
    """Beta(a, b) over pass rates, by the method of moments on the tallies (beta-binomial: the spread of k/n
    beyond what sampling alone gives). Clamped to a proper, not too confident prior."""
    pairs = [(k, n) for k, n in zip(ks, ns, strict=True) if n > 0]
    if not pairs:
        return 0.5, 0.5
    rates = [k / n for k, n in pairs]
    mean = min(max(sum(k for k, _ in pairs) / sum(n for _, n in pairs), 1e-3), 1 - 1e-3)
    var_obs = sum((r - mean) ** 2 for r in rates) / len(rates)
    inv_n = sum(1 / n for _, n in pairs) / len(pairs)  # E[var of k/n given p] = (mean(1-mean) - var_p) E[1/n]
    var_p = (var_obs - mean * (1 - mean) * inv_n) / max(1e-9, 1 - inv_n)
    var_p = min(max(var_p, 1e-4), mean * (1 - mean) * 0.99)
    total = mean * (1 - mean) / var_p - 1  # a + b
    total = min(max(total, 0.05), 1000.0)
    return mean * total, (1 - mean) * total


MIN_GROUP = 20  # problems a source level needs to have a prior of its own


def fit_priors(ks: list[int], ns: list[int], levels: list[str | None]) -> list[Prior]:
    """Each problem's prior: fitted to the problems of its source `level` (MATH's "Level 3", the demo's L1-L5)
    when the level has at least MIN_GROUP of them — a level is what the source already knows of a problem's
    difficulty —, else to every problem of the run."""
    everyone = fit_prior(ks, ns)
    groups: dict[str | None, list[int]] = {}
    for i, level in enumerate(levels):
        groups.setdefault(level, []).append(i)
    by_level = {
        level: fit_prior([ks[i] for i in idx], [ns[i] for i in idx])
        for level, idx in groups.items()
        if level is not None and len(idx) >= MIN_GROUP
    }
    return [by_level.get(level, everyone) for level in levels]


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def chance_of_at_least(need: int, k: int, n: int, more: int, prior: Prior) -> float:
    """P(at least `need` correct among `more` further samples | k of n so far), under the beta prior."""
    if need <= 0:
        return 1.0
    if need > more:
        return 0.0
    return max(0.0, 1.0 - sum(_pmf(k, n, more, prior)[:need]))


def _pmf(k: int, n: int, more: int, prior: Prior) -> list[float]:
    """P(j correct among `more` further samples | k of n), j = 0..more (beta-binomial under the posterior)."""
    a, b = prior[0] + k, prior[1] + n - k
    log_b = _log_beta(a, b)
    return [
        math.exp(
            math.lgamma(more + 1)
            - math.lgamma(j + 1)
            - math.lgamma(more - j + 1)
            + _log_beta(a + j, b + more - j)
            - log_b
        )
        for j in range(more + 1)
    ]


def chance_bucket_moves(k: int, n: int, more: int, prior: Prior, cfg: DifficultyConfig) -> float:
    """P(the bucket of the pass rate after `more` further samples differs from the bucket of k/n)."""
    now = bucket(k / n, k, cfg)
    return sum(p for j, p in enumerate(_pmf(k, n, more, prior)) if bucket((k + j) / (n + more), k + j, cfg) != now)


def next_round(
    tally: pl.DataFrame,
    budget: BudgetConfig,
    keep: int,
    difficulty: DifficultyConfig,
    drawn: int,
    more: int,
    spent: int,
) -> pl.DataFrame:
    """The tally with `stop_reason` set for the problems that stop after a round that brought them to `drawn`
    samples; the rest (stop_reason null) are asked `more` samples next round. `spent`: the run's teacher tokens
    so far (rollouts)."""
    ks, ns = tally[N_CORRECT].to_list(), tally[SAMPLES_DRAWN].to_list()
    # a problem without a gold has no correct sample to be hopeless about: it draws on, for the votes of a pseudo-gold
    has_gold = tally[HAS_GOLD].to_list()
    priors = fit_priors(ks, ns, tally[LEVEL].to_list())
    reasons: list[str | None] = tally[STOP_REASON].to_list()
    priority: dict[int, float] = {}
    for i, (k, n, prior) in enumerate(zip(ks, ns, priors, strict=True)):
        if reasons[i] is None:  # still open
            reason = None
            if k >= keep and settled(k, n, difficulty):
                reason = SETTLED
            elif k >= keep and more > 0 and chance_bucket_moves(k, n, more, prior, difficulty) < budget.stable:
                reason = STABLE
            elif drawn >= budget.max or more <= 0:
                reason = MAX_SAMPLES
            elif k == 0 and has_gold[i] and chance_of_at_least(1, k, n, more, prior) < budget.hopeless:
                reason = HOPELESS
            else:  # short of its traces: the chance the next round completes them; settling only: after those
                priority[i] = chance_of_at_least(keep - k, k, n, more, prior) if k < keep else -1.0 + 1.0 / (1 + n)
            reasons[i] = reason
    if budget.run_tokens is not None:
        tokens, ids = tally[TEACHER_TOKENS].to_list(), tally[PROBLEM_ID].to_list()
        room = budget.run_tokens - spent
        for i in sorted(priority, key=lambda i: (-priority[i], ids[i])):
            cost = tokens[i] / max(1, ns[i]) * more  # this problem's own tokens per sample so far
            if room <= 0 or cost > room:
                reasons[i] = RUN_BUDGET
            else:
                room -= cost
    return tally.with_columns(pl.Series(STOP_REASON, reasons, dtype=pl.String))


def record_round(tally: pl.DataFrame, asked: pl.Series, hi: int, outcomes: pl.DataFrame) -> pl.DataFrame:
    """The tally after a round that brought the problems `asked` to `hi` samples; `outcomes`: that round's samples
    (problem_id, correct, cot_tokens) — a problem whose request failed simply has fewer."""
    got = outcomes.group_by(PROBLEM_ID).agg(
        pl.col(CORRECT).sum().cast(pl.Int64).alias("_k"), pl.col(COT_TOKENS).sum().cast(pl.Int64).alias("_t")
    )
    was_asked = pl.col(PROBLEM_ID).is_in(asked.implode())
    return (
        tally.join(got, on=PROBLEM_ID, how="left")
        .with_columns(
            pl.when(was_asked).then(hi).otherwise(pl.col(SAMPLES_DRAWN)).alias(SAMPLES_DRAWN),
            (pl.col(N_CORRECT) + pl.col("_k").fill_null(0)).alias(N_CORRECT),
            (pl.col(TEACHER_TOKENS) + pl.col("_t").fill_null(0)).alias(TEACHER_TOKENS),
            (pl.col(ROUNDS) + was_asked.cast(pl.Int64)).alias(ROUNDS),
        )
        .drop("_k", "_t")
    )


def decide(
    tally: pl.DataFrame,
    budget: BudgetConfig,
    keep: int,
    difficulty: DifficultyConfig,
    rounds: list[tuple[int, int]],
    r: int,
) -> pl.DataFrame:
    """After round `r` of `rounds`: the fixed budget stops everything; the adaptive one, `next_round`."""
    if budget.policy == "fixed":
        return tally.with_columns(pl.lit(FIXED).alias(STOP_REASON))
    more = rounds[r + 1][1] - rounds[r + 1][0] if r + 1 < len(rounds) else 0
    spent = int(tally[TEACHER_TOKENS].sum())
    return next_round(tally, budget, keep, difficulty, rounds[r][1], more, spent)


def open_problems(tally: pl.DataFrame) -> pl.DataFrame:
    return tally.filter(pl.col(STOP_REASON).is_null())


def new_tally(
    problem_ids: list[str], levels: list[str | None] | None = None, has_gold: list[bool] | None = None
) -> pl.DataFrame:
    """Every problem open, nothing drawn; `levels`: the source's difficulty label of each (priors by level);
    `has_gold`: whether each has a gold (default: all)."""
    return pl.DataFrame(
        {
            PROBLEM_ID: problem_ids,
            LEVEL: levels if levels is not None else [None] * len(problem_ids),
            HAS_GOLD: has_gold if has_gold is not None else [True] * len(problem_ids),
            SAMPLES_DRAWN: [0] * len(problem_ids),
            N_CORRECT: [0] * len(problem_ids),
            TEACHER_TOKENS: [0] * len(problem_ids),
            ROUNDS: [0] * len(problem_ids),
            STOP_REASON: [None] * len(problem_ids),
        },
        schema={
            PROBLEM_ID: pl.String,
            LEVEL: pl.String,
            HAS_GOLD: pl.Boolean,
            SAMPLES_DRAWN: pl.Int64,
            N_CORRECT: pl.Int64,
            TEACHER_TOKENS: pl.Int64,
            ROUNDS: pl.Int64,
            STOP_REASON: pl.String,
        },
    )
