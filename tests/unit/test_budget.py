"""The adaptive sampling budget's policy (stages.budget) on hand-made tallies."""

import math

import polars as pl
import pytest

from tracefactory.config import BudgetConfig, DifficultyConfig
from tracefactory.errors import ConfigError
from tracefactory.stages.budget import (
    HOPELESS,
    MAX_SAMPLES,
    RUN_BUDGET,
    SETTLED,
    chance_of_at_least,
    fit_prior,
    new_tally,
    next_round,
    settled,
)
from tracefactory.store.schema import N_CORRECT, PROBLEM_ID, SAMPLES_DRAWN, STOP_REASON, TEACHER_TOKENS

DIFF = DifficultyConfig()  # easy >= 0.75, medium >= 0.4, hard > 0; Wilson z = 1.96


def test_rounds_double_the_drawn_count_up_to_max_and_fixed_is_one_round():
    assert BudgetConfig(policy="adaptive", first=4, max=32).rounds(8) == [(0, 4), (4, 8), (8, 16), (16, 32)]
    assert BudgetConfig(policy="adaptive", first=3, max=10).rounds(8) == [(0, 3), (3, 6), (6, 10)]
    assert BudgetConfig(policy="adaptive", first=4, max=4).rounds(8) == [(0, 4)]
    assert BudgetConfig().rounds(8) == [(0, 8)]
    with pytest.raises(ConfigError, match="sampling.budget.max"):
        BudgetConfig(first=8, max=4)
    with pytest.raises(ConfigError, match="sampling.budget.hopeless"):
        BudgetConfig(hopeless=1.0)


@pytest.mark.parametrize(
    "k, n, want",
    [
        (16, 16, True),  # Wilson [0.81, 1]: easy whatever more samples say
        (8, 8, False),  # [0.68, 1] straddles easy/medium
        (1, 16, True),  # [0.01, 0.28]: hard
        (1, 8, False),  # [0.02, 0.47]
        (0, 32, False),  # unsolved is never settled: it has no trace
        (10, 20, False),  # [0.30, 0.70] medium or hard
    ],
)
def test_settled_means_the_wilson_interval_lies_in_one_bucket(k, n, want):
    assert settled(k, n, DIFF) is want


def test_chance_of_a_first_correct_trace_matches_the_closed_form_under_a_uniform_prior():
    # beta(1, 1), 0 of n: P(no success in m more) = (n + 1) / (n + m + 1)
    for n, m in [(4, 4), (8, 8), (0, 3), (16, 16)]:
        assert chance_of_at_least(1, 0, n, m, (1.0, 1.0)) == pytest.approx(1 - (n + 1) / (n + m + 1))
    # needing more successes than draws is impossible; needing none is certain
    assert chance_of_at_least(5, 0, 4, 4, (1.0, 1.0)) == 0.0 and chance_of_at_least(0, 0, 4, 4, (1.0, 1.0)) == 1.0
    # two more of 8, having 1 of 8, equals the beta-binomial sum done by hand
    a, b = 1.0 + 1, 1.0 + 7
    pmf = [
        math.comb(8, j)
        * math.exp(math.lgamma(a + j) + math.lgamma(b + 8 - j) - math.lgamma(a + b + 8))
        / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
        for j in range(2)
    ]
    assert chance_of_at_least(2, 1, 8, 8, (1.0, 1.0)) == pytest.approx(1 - sum(pmf))


def test_the_prior_learns_how_polarised_a_runs_pass_rates_are():
    # half the problems always solved, half never: a U-shaped prior, so 0 of 4 is telling
    a, b = fit_prior([4] * 50 + [0] * 50, [4] * 100)
    assert a < 1 and b < 1 and a / (a + b) == pytest.approx(0.5, abs=0.01)
    polarised = chance_of_at_least(1, 0, 4, 4, (a, b))
    # every problem near 0.3: a concentrated prior, so 0 of 4 is bad luck and the next round likely finds one
    spread = [1, 1, 2, 1, 2, 1, 1, 2, 0, 1] * 10
    a2, b2 = fit_prior(spread, [4] * 100)
    assert a2 + b2 > 10
    assert chance_of_at_least(1, 0, 4, 4, (a2, b2)) > 0.6 > 0.3 > polarised


def _tally(rows):
    t = new_tally([r[0] for r in rows])
    return t.with_columns(
        pl.Series(SAMPLES_DRAWN, [r[1] for r in rows], dtype=pl.Int64),
        pl.Series(N_CORRECT, [r[2] for r in rows], dtype=pl.Int64),
        pl.Series(TEACHER_TOKENS, [r[3] for r in rows], dtype=pl.Int64),
    )


def _reasons(t):
    return dict(t.select(PROBLEM_ID, STOP_REASON).iter_rows())


def test_after_a_round_settled_problems_stop_hopeless_ones_stop_the_rest_go_on():
    budget = BudgetConfig(policy="adaptive", first=16, max=64, stable=0.0)  # the Wilson rule alone
    rows = [("easy", 16, 16, 1600), ("hard", 16, 1, 1600), ("mixed", 16, 9, 1600)]
    rows += [(f"never{i}", 16, 0, 3200) for i in range(20)] + [(f"always{i}", 16, 16, 1600) for i in range(20)]
    out = _reasons(next_round(_tally(rows), budget, 1, DIFF, drawn=16, more=16, spent=0))
    assert out["easy"] == SETTLED and out["hard"] == SETTLED and out["mixed"] is None
    assert {out[f"never{i}"] for i in range(20)} == {HOPELESS}  # a polarised run: 0 of 16 will stay 0
    # keep: 2 correct traces wanted — one found is not enough, even in a settled bucket
    out = _reasons(next_round(_tally(rows), budget, 2, DIFF, drawn=16, more=16, spent=0))
    assert out["hard"] is None and out["easy"] == SETTLED
    # the last round: whatever is open stops at max_samples
    out = _reasons(next_round(_tally(rows), budget, 1, DIFF, drawn=64, more=0, spent=0))
    assert out["mixed"] == MAX_SAMPLES and out["easy"] == SETTLED


def test_the_run_budget_goes_to_the_most_promising_problems_first():
    budget = BudgetConfig(policy="adaptive", first=4, max=32, run_tokens=10_000, hopeless=0.0)
    # open after 4 samples of 100 tokens each (a next round of 4 costs 400): one with 2 of 4, which only needs its
    # bucket settled, and two with none yet, equally promising (ties go by problem id)
    rows = [("a-settling", 4, 2, 400), ("b-unsolved", 4, 0, 400), ("c-unsolved", 4, 0, 400)]
    out = _reasons(next_round(_tally(rows), budget, 1, DIFF, drawn=4, more=4, spent=8_800))  # room for all three
    assert out == {"a-settling": None, "b-unsolved": None, "c-unsolved": None}
    out = _reasons(next_round(_tally(rows), budget, 1, DIFF, drawn=4, more=4, spent=9_000))  # for two
    assert out == {"a-settling": RUN_BUDGET, "b-unsolved": None, "c-unsolved": None}
    out = _reasons(next_round(_tally(rows), budget, 1, DIFF, drawn=4, more=4, spent=9_500))  # for one
    assert out == {"a-settling": RUN_BUDGET, "b-unsolved": None, "c-unsolved": RUN_BUDGET}
    out = _reasons(next_round(_tally(rows), budget, 1, DIFF, drawn=4, more=4, spent=10_000))  # spent
    assert set(out.values()) == {RUN_BUDGET}


def test_stable_stops_a_problem_the_next_round_would_hardly_move_out_of_its_bucket():
    from tracefactory.stages.budget import STABLE, chance_bucket_moves

    rows = [("sure", 4, 4, 400), ("edge", 4, 3, 400)]  # 4 of 4: easy; 3 of 4 = 0.75, on easy's lower bound
    rows += [(f"always{i}", 4, 4, 400) for i in range(40)] + [(f"never{i}", 4, 0, 400) for i in range(40)]
    tally = _tally(rows)
    prior = fit_prior(tally[N_CORRECT].to_list(), tally[SAMPLES_DRAWN].to_list())
    assert chance_bucket_moves(4, 4, 4, prior, DIFF) < 0.05 < 0.2 < chance_bucket_moves(3, 4, 4, prior, DIFF)
    stable = BudgetConfig(policy="adaptive", first=4, max=32, hopeless=0.0, stable=0.2)
    out = _reasons(next_round(tally, stable, 1, DIFF, drawn=4, more=4, spent=0))
    assert out["sure"] == STABLE and out["edge"] is None
    # off: 4 of 4 is not settled (Wilson [0.51, 1] spans easy and medium), so it goes on
    off = BudgetConfig(policy="adaptive", first=4, max=32, hopeless=0.0, stable=0.0)
    assert _reasons(next_round(tally, off, 1, DIFF, drawn=4, more=4, spent=0))["sure"] is None


def test_priors_are_fitted_per_source_level_when_a_level_has_enough_problems():
    from tracefactory.stages.budget import MIN_GROUP, fit_priors

    # level 1 solved about half the time, level 5 never; level 9 has too few problems for a prior of its own
    ks = [2] * (MIN_GROUP - 1) + [0] + [0] * MIN_GROUP + [0] * 3
    levels = ["L1"] * MIN_GROUP + ["L5"] * MIN_GROUP + ["L9"] * 3
    priors = fit_priors(ks, [4] * len(ks), levels)
    l1, l5, l9 = priors[0], priors[MIN_GROUP], priors[-1]
    assert l1[0] / sum(l1) == pytest.approx(0.475, abs=0.01) and l5[0] / sum(l5) < 0.01
    assert l9 == fit_prior(ks, [4] * len(ks))  # the run's prior
    # 0 of 4 at level 1 is bad luck, at level 5 it is the level: the next round's chance differs accordingly
    assert chance_of_at_least(1, 0, 4, 4, l1) > 0.5 > 0.05 > chance_of_at_least(1, 0, 4, 4, l5)
    tally = _tally([(f"p{i}", 4, k, 400) for i, k in enumerate(ks)]).with_columns(pl.Series("level", levels))
    out = next_round(tally, BudgetConfig(policy="adaptive", first=4, max=32), 1, DIFF, drawn=4, more=4, spent=0)
    # 0 of 4 at level 5 stops; 0 of 4 at level 1 goes on
    assert out["stop_reason"][MIN_GROUP] == HOPELESS and out["stop_reason"][MIN_GROUP - 1] is None


def test_a_problem_without_a_gold_is_never_hopeless_it_draws_on_for_the_votes_of_a_pseudo_gold():
    budget = BudgetConfig(policy="adaptive", first=16, max=64, stable=0.0)
    rows = [(f"never{i}", 16, 0, 3200) for i in range(20)] + [(f"always{i}", 16, 16, 1600) for i in range(20)]
    tally = _tally(rows)
    tally = tally.with_columns(pl.Series("_has_gold", [i != 0 for i in range(40)]))  # never0 has no gold
    out = _reasons(next_round(tally, budget, 1, DIFF, drawn=16, more=16, spent=0))
    assert out["never0"] is None and {out[f"never{i}"] for i in range(1, 20)} == {HOPELESS}
    out = _reasons(next_round(tally, budget, 1, DIFF, drawn=64, more=0, spent=0))
    assert out["never0"] == MAX_SAMPLES
