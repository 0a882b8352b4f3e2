"""The grade stage at scale: a synthetic rollouts table of N traces (K = 16 per problem, a few distinct
answers per problem, 200-2,000-character traces, a few percent truncated or unanswered) graded by the
real stage; traces per second and the peak RSS (this process and its grading workers). Then a sample of
the traces graded one by one with plain Math-Verify (extract, parse, verify: no pair cache, no fast path)
— the verdicts must be identical.

    .venv/bin/python bench/grading_scale.py [--traces 1000000] [--sample 10000] [--json ...]

Only ratios and counts compare across machines; traces/s is this machine's.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
from rss import PeakRss  # noqa: E402

from tracefactory.config import GradeConfig  # noqa: E402
from tracefactory.grading.verify import extract_answer, is_correct  # noqa: E402
from tracefactory.stages.grade import grade  # noqa: E402
from tracefactory.store.schema import ANSWER, COT_TOKENS, FINISH_REASON, PROBLEM_ID, TEXT  # noqa: E402

WORDS = (
    "first we add the two numbers then we subtract the cost of the apples so she has left after paying for "
    "the tickets which means each friend gets the same share and the total is found by multiplying"
).split()


def _gold(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.7:
        return str(rng.randint(1, 99999))
    if kind < 0.85:
        return f"\\frac{{{rng.randint(1, 30)}}}{{{rng.randint(31, 60)}}}"
    return f"{rng.randint(1, 999)}.{rng.randint(1, 99)}"


def _variants(gold: str, rng: random.Random) -> list[str]:
    """A few distinct answers a teacher gives to one problem: the gold as written, the gold in another
    form, wrong ones."""
    out = [gold]
    if gold.isdigit() and int(gold) >= 1000:
        out.append(f"{int(gold):,}")
    elif gold.startswith("\\frac"):
        out.append(gold.replace("\\frac", "\\dfrac"))
    out += [str(rng.randint(1, 99999)) for _ in range(rng.randint(1, 3))]
    return out


def _trace(answer: str, rng: random.Random, filler: str, chars: tuple[int, int] = (200, 2000)) -> tuple[str, str]:
    n = rng.randint(*chars)
    start = rng.randrange(0, len(filler) - n)
    body = filler[start : start + n]
    r = rng.random()
    if r < 0.02:
        return body, "length"  # truncated
    if r < 0.05:
        return body + " so that is it.", "stop"  # no answer
    ending = rng.choice(
        [
            f" The answer is \\boxed{{{answer}}}.",
            f"\n#### {answer}",
            f" So the answer is ${answer}$.",
            f"\n# Answer\n\n{answer}",
        ]
    )
    return body + ending, "stop"


def synthetic(traces: int, k: int = 16, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    filler = " ".join(rng.choice(WORDS) for _ in range(200_000))
    problems, ids, texts, finishes = [], [], [], []
    for p in range(traces // k):
        gold = _gold(rng)
        answers = _variants(gold, rng)
        weights = [6] + [1] * (len(answers) - 1)
        problems.append((f"p{p}", gold))
        for _ in range(k):
            text, finish = _trace(rng.choices(answers, weights)[0], rng, filler)
            ids.append(f"p{p}")
            texts.append(text)
            finishes.append(finish)
    rollouts = pl.DataFrame({PROBLEM_ID: ids, TEXT: texts, FINISH_REASON: finishes})
    rollouts = rollouts.with_columns((pl.col(TEXT).str.len_chars() // 4).alias(COT_TOKENS))  # ~4 characters a token
    return rollouts, pl.DataFrame(problems, schema=[PROBLEM_ID, ANSWER], orient="row")


def after_grading(graded: pl.DataFrame, problems: pl.DataFrame) -> int:
    """The stages after grading, as the flow runs them with step scoring off."""
    from tracefactory.config import CurriculumConfig, DifficultyConfig, SelectConfig
    from tracefactory.stages.curriculum import curriculum
    from tracefactory.stages.difficulty import difficulty
    from tracefactory.stages.select import select
    from tracefactory.stages.step_score import unscored
    from tracefactory.store.schema import SAMPLE_INDEX

    rollouts = unscored(graded).with_columns(pl.int_range(pl.len()).over(PROBLEM_ID).alias(SAMPLE_INDEX))
    chosen, _ = select(rollouts, SelectConfig())
    tagged, _ = difficulty(problems.with_columns(pl.col(PROBLEM_ID).alias("question")), DifficultyConfig(), chosen)
    dataset, _ = curriculum(chosen, CurriculumConfig(), tagged)
    return len(dataset)


def plain(gold: str, text: str, finish: str) -> tuple[bool, str | None]:
    """One trace graded with nothing but extraction and Math-Verify (the reference)."""
    if finish == "length":
        return False, "truncated"
    ok, why = is_correct(gold, extract_answer(text), timeout_s=None)
    return ok, None if ok else why


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1_000_000)
    ap.add_argument("--sample", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default="bench/results/grading_scale.json")
    args = ap.parse_args()
    peak = PeakRss()
    t = time.perf_counter()
    rollouts, problems = synthetic(args.traces)
    made = time.perf_counter() - t
    print(f"{len(rollouts):,} traces of {len(problems):,} problems made in {made:.1f} s; RSS {peak.mib():,.0f} MiB")
    peak.reset()
    t = time.perf_counter()
    graded, report = grade(rollouts, GradeConfig(workers=args.workers), problems)
    seconds = time.perf_counter() - t
    rate = len(rollouts) / seconds
    print(f"grade: {seconds:.1f} s, {rate:,.0f} traces/s; {report.dropped_by_reason}")
    print(f"peak RSS while grading (this process and its workers): {peak.mib():,.0f} MiB")
    t = time.perf_counter()
    kept = after_grading(graded, problems)
    print(
        f"after grading (select, difficulty, curriculum): {time.perf_counter() - t:.1f} s, {kept:,} dataset rows;"
        f" peak RSS so far {peak.mib():,.0f} MiB"
    )
    rng = random.Random(1)
    rows = rng.sample(range(len(rollouts)), min(args.sample, len(rollouts)))
    gold = dict(problems.iter_rows())
    sub = graded[rows]
    mismatches = []
    t = time.perf_counter()
    for pid, text, finish, ok, why in sub.select(PROBLEM_ID, TEXT, FINISH_REASON, "correct", "drop_reason").rows():
        ref = plain(gold[pid], text, finish)
        if ref != (ok, why):
            mismatches.append({"problem": pid, "gold": gold[pid], "stage": [ok, why], "plain": list(ref)})
    plain_rate = len(rows) / (time.perf_counter() - t)
    print(f"sample of {len(rows):,}: {len(mismatches)} verdicts differ from plain Math-Verify")
    print(f"plain Math-Verify, one trace at a time: {plain_rate:,.0f} traces/s; the stage: {rate / plain_rate:.1f}x")
    for m in mismatches[:10]:
        print("   ", m)
    out = {
        "traces": len(rollouts),
        "seconds": round(seconds, 2),
        "traces_per_s": round(rate),
        "peak_rss_mib": peak.mib(),
        "plain_traces_per_s": round(plain_rate),
        "dataset_rows": kept,
        "sample": len(rows),
        "mismatches": mismatches[:100],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
