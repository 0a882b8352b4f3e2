"""The gold audit's precision and recall on planted wrong golds (`audit`, issue 25).

    .venv/bin/python bench/gold_audit.py [--pool runs/bench-budget/pool-s0] [--planted 30] [--seed 0]
                                         [--out runs/bench-audit]

The demo's 300 original problems with `--planted` golds changed by a seeded rule (the gold plus one of -10, -2,
-1, +1, +2, +10, as a slip of transcription would), through the real flow with the demo's config (audit on, step
scoring off) and once more with the fixed budget at n=16 — on hard-linked copies of a pool run's generation
store (`bench/adaptive_budget.py` makes one: 16 samples of every demo problem), so nothing is generated: a
gold is not part of a request's key, and the same questions have the same samples. Then the audit replayed
on the graded rollouts at other bars. A flag on an unplanted problem is a false positive (the demo's golds are
made by its generator, so all of them are right): the teacher agreeing with itself on a wrong answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory.config import AuditConfig  # noqa: E402
from tracefactory.stages.audit import audit  # noqa: E402

DELTAS = (-10, -2, -1, 1, 2, 10)
# (share, min_votes, gold_share): the defaults first
BARS = [(0.6, 4, 0.0), (0.6, 4, 0.1), (0.6, 4, 0.2), (0.6, 3, 0.0), (0.5001, 4, 0.0), (0.8, 4, 0.0), (0.8, 4, 0.2)]


def plant(source: Path, out: Path, n: int, seed: int) -> set[str]:
    rows = [json.loads(line) for line in source.open()]
    rng = random.Random(seed)
    chosen = set(rng.sample([r["id"] for r in rows], n))
    for r in rows:
        if r["id"] in chosen:
            gold = int(r["answer"])
            r["answer"] = str(next(g for g in (gold + rng.choice(DELTAS) for _ in range(20)) if g >= 0 and g != gold))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return chosen


def run(pool: Path, out: Path, source: Path, over: dict) -> pl.DataFrame:
    from flows.build_dataset import run_build

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(pool / "_work" / "generations", out / "_work" / "generations", copy_function=os.link)
    base = {"source.path": str(source), "rewrite.enabled": False, "step_score.enabled": False, "name": "audit-bench"}
    run_build(None, str(out), {**base, **over})
    return pl.read_parquet(out / "problems")


def score(flagged: set[str], planted: set[str], problems: pl.DataFrame) -> str:
    tp = len(flagged & planted)
    precision = tp / len(flagged) if flagged else float("nan")
    recall = tp / len(planted)
    levels = dict(problems.select("problem_id", "level").iter_rows())
    by_level = {}
    for p in sorted(planted):
        lv = levels[p]
        hit, total = by_level.get(lv, (0, 0))
        by_level[lv] = (hit + (p in flagged), total + 1)
    fp_levels = sorted(levels[p] for p in flagged - planted)
    recall_by = " ".join(f"L{lv} {h}/{t}" for lv, (h, t) in sorted(by_level.items()))
    return (
        f"flagged {len(flagged):3d}  planted found {tp:2d}/{len(planted)}  precision {precision:.3f}"
        f"  recall {recall:.3f}  (recall by level: {recall_by}; false positives at levels {fp_levels or '-'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", type=Path, default=ROOT / "runs" / "bench-budget" / "pool-s0")
    ap.add_argument("--planted", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-audit")
    args = ap.parse_args()
    source = args.out / "planted.jsonl"
    planted = plant(ROOT / "data" / "demo" / "problems.jsonl", source, args.planted, args.seed)
    print(f"{len(planted)} of 300 golds planted wrong (seed {args.seed})")
    runs = {
        "demo config (adaptive budget, 2-16 samples)": {},
        "fixed budget, 16 samples": {"sampling.budget.policy": "fixed", "sampling.n": 16},
    }
    for name, over in runs.items():
        out = args.out / ("adaptive" if not over else "fixed16")
        problems = run(args.pool, out, source, over)
        generated = json.loads(pl.read_parquet(out / "funnel").filter(pl.col("stage") == "rollout")["detail"][0]).get(
            "generated_new", 0
        )
        print(f"\n{name}: {len(problems)} problems, {generated} generated (0: all read from the pool's store)")
        flagged = set(problems.filter(pl.col("gold_suspect"))["problem_id"])
        print(f"  the run (the demo's bars):           {score(flagged, planted, problems)}")
        rollouts = pl.read_parquet(out / "rollouts").with_columns(pl.lit(None, pl.String).alias("drop_reason"))
        for share, votes, gold in BARS:
            cfg = AuditConfig(enabled=True, share=share, min_votes=votes, gold_share=gold)
            (_, verdicts, _), _ = audit(rollouts, cfg, problems)
            flagged = set(verdicts.filter(pl.col("gold_suspect"))["problem_id"])
            print(f"  replayed: share {share:.2f}, {votes} votes, gold {gold:.1f}: {score(flagged, planted, problems)}")


if __name__ == "__main__":
    main()
