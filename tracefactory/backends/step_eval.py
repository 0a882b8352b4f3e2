"""Agreement of a step scorer with human step labels (PRM800K format).

Metrics:
- `step_auroc`: AUROC of the step scores for human +1 (positive) vs -1 (negative) steps; 0-rated
  steps are left out. In `alternative_step` rows only the last step is new (its prefix repeats a
  chosen path), so only that step counts; in `chosen_path` rows every step counts.
- `first_error_f1`: ProcessBench-style. On traces with a human -1 step, accuracy = predicted first
  bad step equals the first -1 step; on traces without, accuracy = no step predicted bad; F1 is the
  harmonic mean of the two accuracies.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tracefactory.backends.scorers import StepItem, StepScorer
from tracefactory.store.schema import StepScores


@dataclass(frozen=True)
class LabelledTrace:
    item: StepItem
    labels: tuple[int, ...]
    last_only: bool  # only the last label is informative


def load_labelled(path: str | Path, limit: int | None = None, seed: int = 0) -> list[LabelledTrace]:
    """The labelled traces of `path`; with `limit`, a seeded sample of that many that holds both labels in the
    file's proportion (at least one trace with a bad step and one without, where the file has them) — the
    first rows of the shipped PRM800K sample are chosen paths without a single negative step — in file order."""
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            item = StepItem(r["id"], r["problem"], str(r["gold_answer"]), tuple(r["steps"]))
            out.append(LabelledTrace(item, tuple(r["step_labels"]), r["kind"] == "alternative_step"))
    if limit is None or limit >= len(out):
        return out
    bad = [i for i, t in enumerate(out) if -1 in t.labels]
    good = [i for i, t in enumerate(out) if -1 not in t.labels]
    n_bad = min(len(bad), max(1 if bad else 0, round(limit * len(bad) / len(out))), limit - (1 if good else 0))
    rng = random.Random(seed)
    chosen = rng.sample(bad, n_bad) + rng.sample(good, min(len(good), limit - n_bad))
    return [out[i] for i in sorted(chosen)]


_CHECK = re.compile(r"Check: (\d+) ([-+*/]) (\d+) = (\d+)\.")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def true_check(step: str) -> bool:
    """A re-check line the teacher writes (`Check: 12 - 5 = 7.`) whose arithmetic holds: it leaves the chain alone."""
    m = _CHECK.fullmatch(step.strip())
    return bool(m) and _OPS[m.group(2)](int(m.group(1)), int(m.group(3))) == int(m.group(4))


def reference_first_bad(steps: Sequence[str], reference: Sequence[str]) -> int | None:
    """The exact first bad step of a trace of a problem with one reference chain (the demo generator's): the first
    line that departs from the reference (a true re-check line departs from nothing; a slip is bad even when the
    next line corrects it), or where one of the two ends early; None if the trace is the reference."""
    ref = [r.strip() for r in reference]
    k = 0
    for i, step in enumerate(steps):
        if k < len(ref) and step.strip() == ref[k]:
            k += 1
        elif not true_check(step):
            return i
    return None if k == len(ref) else len(steps)


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half."""
    if not pos or not neg:
        return None
    if any(math.isnan(x) for x in (*pos, *neg)):
        raise ValueError("step scores contain NaN")
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):  # average ranks over ties
        j = i + 1
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        avg = (i + j + 1) / 2
        rank_sum += avg * sum(lbl for _, lbl in ranked[i:j])
        i = j
    return (rank_sum - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def first_error_f1(traces: Sequence[LabelledTrace], results: Sequence[StepScores]) -> dict[str, float | None]:
    err_hits, err_n, ok_hits, ok_n = 0, 0, 0, 0
    for t, r in zip(traces, results, strict=True):
        human = next((i for i, lbl in enumerate(t.labels) if lbl == -1), None)
        if human is None:
            ok_n += 1
            ok_hits += r.first_bad_step is None
        else:
            err_n += 1
            err_hits += r.first_bad_step == human
    acc_err = err_hits / err_n if err_n else None
    acc_ok = ok_hits / ok_n if ok_n else None
    f1 = None
    if acc_err is not None and acc_ok is not None:  # both kinds of trace present; F1 of two zeros is 0
        f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if acc_err + acc_ok else 0.0
    return {"acc_erroneous": acc_err, "acc_correct": acc_ok, "first_error_f1": f1}


def evaluate(scorer: StepScorer, traces: Sequence[LabelledTrace]) -> dict:
    results = scorer.score([t.item for t in traces])
    pos, neg, skipped = [], [], 0
    for t, r in zip(traces, results, strict=True):
        if not r.scores:
            skipped += 1
            continue
        pairs = list(zip(t.labels, r.scores, strict=True))[-1:] if t.last_only else zip(t.labels, r.scores, strict=True)
        for lbl, s in pairs:
            (pos if lbl == 1 else neg if lbl == -1 else []).append(s)
    scored = [(t, r) for t, r in zip(traces, results, strict=True) if r.scores]
    return {
        "scorer": scorer.name,
        "traces": len(traces),
        "unscored": skipped,
        "positive_steps": len(pos),
        "negative_steps": len(neg),
        "step_auroc": auroc(pos, neg),
        **first_error_f1([t for t, _ in scored], [r for _, r in scored]),
    }
