"""How right is the step filter? Precision / recall of `low_step_score` against the demo's reference
solutions: the demo generator's problems have one correct chain of equations, so a correct-answer
trace whose steps differ from it has a wrong step (the first differing line is its true first bad
step — e.g. right answer through two cancelling slips).

    .venv/bin/python bench/step_filter_quality.py runs/demo [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory.backends.step_eval import reference_first_bad  # noqa: E402


def quality(run: Path, problems: Path) -> dict:
    ref = {r["id"]: r["solution"].splitlines() for r in map(json.loads, problems.read_text().splitlines())}
    rows = pl.read_parquet(run / "rollouts").filter(pl.col("correct") & pl.col("step_scores").is_not_null())
    tp = fp = fn = tn = exact = 0
    for pid, steps, reason, first_bad in rows.select(
        "problem_id", "steps", "drop_reason", "first_bad_step"
    ).iter_rows():
        if pid not in ref:  # a rewritten variant: it has no reference chain
            continue
        truth = reference_first_bad(steps, ref[pid])
        flagged = reason == "low_step_score"
        tp, fp = tp + (flagged and truth is not None), fp + (flagged and truth is None)
        fn, tn = fn + (not flagged and truth is not None), tn + (not flagged and truth is None)
        exact += flagged and truth is not None and first_bad == truth
    return {
        "run": str(run),
        "scored": tp + fp + fn + tn,  # the originals' correct traces (variants have no reference)
        "wrong_step_traces": tp + fn,
        "flagged": tp + fp,
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "same_first_bad_step_when_caught": exact / max(1, tp),
    }


def main() -> None:
    runs = [Path(a) for a in sys.argv[1:]] or [ROOT / "runs" / "demo"]
    print("| run | scored traces | with a wrong step | flagged | precision | recall | first bad step right |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        q = quality(run, ROOT / "data" / "demo" / "problems.jsonl")
        print(
            f"| {run} | {q['scored']} | {q['wrong_step_traces']} | {q['flagged']} | {q['precision']:.2f} | "
            f"{q['recall']:.2f} | {q['same_first_bad_step_when_caught']:.0%} |"
        )


if __name__ == "__main__":
    main()
