"""Adaptive vs fixed sampling budgets on the same problems (`sampling.budget`, issue 24).

    .venv/bin/python bench/adaptive_budget.py [--config CONFIG] [--pool 16] [--seeds 0] [--out runs/bench-budget]
                                              [--check] [--headline N_PER_LEVEL]

1. A pool per seed: the config's problems (the embedded demo's 588 by default) through the factory with the
   fixed budget at n = POOL, step scoring off (its cost is not what a budget changes). Sample j of a problem is
   the same in every run whatever the budget (its seed is the problem's + j), so any budget's samples are a
   prefix of the pool's: each policy below is replayed on the pool with the budget's own functions
   (stages.budget: record_round, decide), drawing exactly what a run would. `--check` also runs the first
   adaptive setting through the real flow on a copy of the pool's generation store (nothing is generated) and
   compares its `problems` table with the replay.
2. For fixed K=8 and each adaptive setting: teacher tokens (rollouts), accepted problems (at least `select.keep`
   correct traces), tokens per accepted trace, problems per difficulty bucket, the share of problems whose
   bucket agrees with fixed K=8's; and each setting again with `run_tokens` = fixed K=8's tokens (equal spend).
   Intervals: 95% bootstrap over problems; with several seeds, each seed's line and their spread.
3. `--headline N`: a larger set through the real flow, no pool: N problems per level from the demo's generator
   (`training.synth`, seed HEADLINE_SEED), rewritten as the demo's are (about 2N per level after dedup); the
   fixed K=8 run, then adaptive budgets (HEADLINE_SETTINGS), each on a hard-linked copy of the run before's
   generation store (drawing only samples no earlier run drew), compared from their `problems` tables.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory.config import BudgetConfig, load_config  # noqa: E402
from tracefactory.stages.budget import decide, new_tally, open_problems, record_round  # noqa: E402
from tracefactory.stages.difficulty import bucket  # noqa: E402
from tracefactory.store.schema import (  # noqa: E402
    CORRECT,
    COT_TOKENS,
    LEVEL,
    N_CORRECT,
    PROBLEM_ID,
    SAMPLE_INDEX,
    SAMPLES_DRAWN,
    STOP_REASON,
    TEACHER_TOKENS,
)

FIXED_K = 8
HEADLINE_SEED = 2027  # the demo's problems are seed 2026
# (first, max, hopeless, stable): the settings compared with fixed K=8
SETTINGS = [
    (2, 16, 0.10, 0.2),  # the defaults (`--check` runs this one through the real flow)
    (4, 16, 0.10, 0.2),
    (4, 16, 0.05, 0.0),  # settled or hopeless only
    (4, 16, 0.05, 0.1),
    (4, 16, 0.05, 0.2),
    (4, 16, 0.20, 0.2),
    (4, 8, 0.10, 0.2),
]


def build_pool(config: str | None, out: Path, pool: int, seed: int) -> pl.DataFrame:
    """The pool run (resumed if it is there): every problem's first `pool` samples, graded."""
    from flows.build_dataset import run_build

    over = {"sampling.n": pool, "sampling.seed": seed, "step_score.enabled": False, "name": f"budget-pool-{seed}"}
    over["sampling.budget.policy"] = "fixed"
    if not (out / "rollouts").exists():
        started = time.time()
        run_build(config, str(out), over)
        print(f"pool seed {seed}: {pool} samples per problem in {time.time() - started:.0f} s", flush=True)
    return pl.read_parquet(out / "rollouts", columns=[PROBLEM_ID, SAMPLE_INDEX, CORRECT, COT_TOKENS])


def replay(pool: pl.DataFrame, problems: pl.DataFrame, budget: BudgetConfig, n: int, cfg) -> pl.DataFrame:
    """The budget's tally over the pool, round by round as `flows.build_dataset._rollouts` draws it."""
    rounds = budget.rounds(n)
    tally = new_tally(problems[PROBLEM_ID].to_list(), problems[LEVEL].to_list())
    for r, (lo, hi) in enumerate(rounds):
        asked = open_problems(tally)[PROBLEM_ID]
        if r and not len(asked):
            break
        drawn = pool.filter(pl.col(PROBLEM_ID).is_in(asked.implode()) & pl.col(SAMPLE_INDEX).is_between(lo, hi - 1))
        tally = record_round(tally, asked, hi, drawn)
        tally = decide(tally, budget, cfg.select.keep, cfg.difficulty, rounds, r)
    return tally


def measures(tally: pl.DataFrame, cfg, idx: list[int] | None = None) -> dict:
    rows = tally.rows(named=True)
    rows = [rows[i] for i in idx] if idx is not None else rows
    tokens = sum(r[TEACHER_TOKENS] for r in rows)
    buckets = [bucket(r[N_CORRECT] / max(1, r[SAMPLES_DRAWN]), r[N_CORRECT], cfg.difficulty) for r in rows]
    accepted = sum(r[N_CORRECT] >= cfg.select.keep for r in rows)
    out = {"tokens": tokens, "accepted": accepted, "tokens_per_accepted": tokens / max(1, accepted)}
    out["samples"] = sum(r[SAMPLES_DRAWN] for r in rows)
    for name in [b for b, _ in cfg.difficulty.buckets] + ["unsolved"]:
        out[name] = buckets.count(name)
    out["accepted_hard"] = sum(b == "hard" for b in buckets)
    return out


def agreement(a: pl.DataFrame, b: pl.DataFrame, cfg) -> float:
    def of(t):
        return {
            r[PROBLEM_ID]: bucket(r[N_CORRECT] / max(1, r[SAMPLES_DRAWN]), r[N_CORRECT], cfg.difficulty)
            for r in t.rows(named=True)
        }

    x, y = of(a), of(b)
    return sum(x[p] == y[p] for p in x) / len(x)


def bootstrap(base: pl.DataFrame, cand: pl.DataFrame, cfg, reps: int = 1000, seed: int = 0) -> dict:
    """95% intervals (percentile bootstrap over problems) of tokens per accepted trace and accepted problems,
    the candidate's relative to the baseline's, on the same resampled problems."""
    rng, n = random.Random(seed), len(base)
    tpa, acc, hard = [], [], []
    for _ in range(reps):
        idx = [rng.randrange(n) for _ in range(n)]
        b, c = measures(base, cfg, idx), measures(cand, cfg, idx)
        tpa.append(c["tokens_per_accepted"] / b["tokens_per_accepted"])
        acc.append(c["accepted"] / max(1, b["accepted"]))
        hard.append(c["accepted_hard"] / max(1, b["accepted_hard"]))

    def ci(xs):
        xs = sorted(xs)
        return xs[int(0.025 * len(xs))], xs[int(0.975 * len(xs)) - 1]

    return {"tpa": ci(tpa), "accepted": ci(acc), "hard": ci(hard)}


def check(config: str | None, pool_dir: Path, out: Path, seed: int, budget: BudgetConfig, want: pl.DataFrame) -> None:
    """The first adaptive setting through the real flow, on a copy of the pool's store: same tally as replayed."""
    from flows.build_dataset import run_build

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(pool_dir / "_work" / "generations", out / "_work" / "generations", copy_function=os.link)
    over = {"sampling.seed": seed, "step_score.enabled": False, "name": "budget-check"}
    over.update({f"sampling.budget.{k}": v for k, v in vars(budget).items()})
    started = time.time()
    run_build(config, str(out), over)
    got = pl.read_parquet(out / "problems").select(PROBLEM_ID, SAMPLES_DRAWN, STOP_REASON, TEACHER_TOKENS)
    exp = want.select(PROBLEM_ID, SAMPLES_DRAWN, STOP_REASON, TEACHER_TOKENS)
    same = got.sort(PROBLEM_ID).equals(exp.sort(PROBLEM_ID))
    verdict = "equals" if same else "DIFFERS FROM"
    print(f"check: the real adaptive run ({time.time() - started:.0f} s) {verdict} the replay")
    if not same:
        print(
            got.join(exp, on=PROBLEM_ID, suffix="_replay").filter(pl.col(STOP_REASON) != pl.col("stop_reason_replay"))
        )


HEADLINE_SETTINGS = [(2, 16), (4, 16)]  # (first, max), the other settings at their defaults; the default first


def headline(config: str | None, out: Path, per_level: int, seed: int, cfg) -> None:
    """Fixed K=8, then each of HEADLINE_SETTINGS through the real flow on a larger generated set, each run on a
    hard-linked copy of the one before's generation store (it draws only samples no earlier run drew)."""
    from flows.build_dataset import run_build
    from tracefactory.training.synth import generate, write_jsonl

    source = out / "problems.jsonl"
    if not source.exists():
        write_jsonl(generate(per_level, HEADLINE_SEED), source)
    over = {"source.path": str(source.resolve()), "sampling.seed": seed, "step_score.enabled": False}
    fixed = {"sampling.budget.policy": "fixed", "sampling.n": FIXED_K}
    runs = [(f"fixed K={FIXED_K}", out / f"fixed-s{seed}", fixed)]
    for first, mx in HEADLINE_SETTINGS:
        budget = {f"sampling.budget.{k}": v for k, v in vars(BudgetConfig(policy="adaptive")).items()}
        budget.update({"sampling.budget.first": first, "sampling.budget.max": mx})
        runs.append((f"adaptive {first}/{mx}", out / f"adaptive-{first}-{mx}-s{seed}", budget))
    timings, before = {}, None
    for name, run_dir, settings in runs:
        if not (run_dir / "problems").exists():  # not finished: resumed from its committed chunks if started
            if before is not None and not run_dir.exists():
                gens = "_work/generations"
                shutil.copytree(before / gens, run_dir / gens, copy_function=os.link)
            started = time.time()
            run_build(config, str(run_dir), {**over, **settings, "name": "budget-headline"})
            timings[name] = time.time() - started
        before = run_dir
    tables = [pl.read_parquet(d / "problems") for _, d, _ in runs]
    base = tables[0]
    print(f"\nheadline, seed {seed}: {len(base)} problems ({per_level} per level generated, rewritten)")
    for name, secs in timings.items():
        print(f"  {name}: {secs:.0f} s (samples no earlier run drew)")
    print(HEAD)
    show(runs[0][0], base, measures(base, cfg), base, cfg)
    for (name, _, _), t in zip(runs[1:], tables[1:], strict=True):
        show(name, t, measures(t, cfg), base, cfg)
        compare(base, t, cfg)


HEAD = "policy                               tokens  accepted  tok/acc  hard acc  easy med hard unsol  agree"


def show(name: str, t: pl.DataFrame, m: dict, base_t: pl.DataFrame, cfg) -> None:
    agree = agreement(t, base_t, cfg)
    print(
        f"{name:34s} {m['tokens']:8d} {m['accepted']:9d} {m['tokens_per_accepted']:8.0f}"
        f" {m['accepted_hard']:9d}"
        f"  {m['easy']:4d} {m['medium']:3d} {m['hard']:4d} {m['unsolved']:5d}  {agree:5.3f}"
    )


def compare(base: pl.DataFrame, t: pl.DataFrame, cfg) -> None:
    """The candidate against the baseline: ratios with their bootstrap intervals, and why problems stopped."""
    b, m, ci = measures(base, cfg), measures(t, cfg), bootstrap(base, t, cfg)
    print(
        f"{'':34s} tok/acc x{m['tokens_per_accepted'] / b['tokens_per_accepted']:.3f}"
        f" [{ci['tpa'][0]:.3f}, {ci['tpa'][1]:.3f}]  accepted x{m['accepted'] / b['accepted']:.3f}"
        f" [{ci['accepted'][0]:.3f}, {ci['accepted'][1]:.3f}]  hard accepted"
        f" x{m['accepted_hard'] / max(1, b['accepted_hard']):.3f}"
        f" [{ci['hard'][0]:.3f}, {ci['hard'][1]:.3f}]"
        f"  stops {dict(sorted(t[STOP_REASON].value_counts().rows()))}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="default: the embedded demo")
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-budget")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--headline", type=int, metavar="N_PER_LEVEL", help="only the larger real-flow comparison")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.headline:
        for seed in args.seeds:
            headline(args.config, args.out / f"headline-{args.headline}", args.headline, seed, cfg)
        return
    lines = []
    for seed in args.seeds:
        pool_dir = args.out / f"pool-s{seed}"
        pool = build_pool(args.config, pool_dir, args.pool, seed)
        problems = pl.read_parquet(pool_dir / "problems", columns=[PROBLEM_ID, LEVEL])
        base = replay(pool, problems, BudgetConfig(), FIXED_K, cfg)
        b = measures(base, cfg)
        print(f"\nseed {seed}: {len(problems)} problems, pool of {args.pool}")
        print(HEAD)

        show(f"fixed K={FIXED_K}", base, b, base, cfg)
        for first, mx, hopeless, stable in SETTINGS:
            for equal in (False, True):
                budget = BudgetConfig(
                    policy="adaptive",
                    first=first,
                    max=mx,
                    hopeless=hopeless,
                    stable=stable,
                    run_tokens=b["tokens"] if equal else None,
                )
                t = replay(pool, problems, budget, FIXED_K, cfg)
                m = measures(t, cfg)
                name = f"adaptive {first}/{mx} h={hopeless} s={stable}{' =tok' if equal else ''}"
                show(name, t, m, base, cfg)
                compare(base, t, cfg)
                lines.append((seed, name, m, b))
        if args.check:
            first, mx, hopeless, stable = SETTINGS[0]
            budget = BudgetConfig(policy="adaptive", first=first, max=mx, hopeless=hopeless, stable=stable)
            want = replay(pool, problems, budget, FIXED_K, cfg)
            check(args.config, pool_dir, args.out / f"check-s{seed}", seed, budget, want)
    if len(args.seeds) > 1:
        print("\nover seeds (tokens per accepted trace and accepted problems, relative to fixed K=8):")
        for name in dict.fromkeys(n for _, n, _, _ in lines):
            r = [
                (m["tokens_per_accepted"] / b["tokens_per_accepted"], m["accepted"] / b["accepted"])
                for _, n, m, b in lines
                if n == name
            ]
            print(
                f"{name:34s} tok/acc {min(x for x, _ in r):.3f}-{max(x for x, _ in r):.3f}"
                f"  accepted {min(y for _, y in r):.3f}-{max(y for _, y in r):.3f}"
            )


if __name__ == "__main__":
    main()
