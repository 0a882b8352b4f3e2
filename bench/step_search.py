"""Monte-Carlo step scoring: teacher tokens per scored trace, binary search vs every prefix.

    .venv/bin/python bench/step_search.py [--traces 60] [--n 4]

    .venv/bin/python bench/step_search.py --correct-only --rollouts 64   # the traces a run scores

Traces are the plain embedded teacher's own completions of level-4/5 demo problems with >= 6 steps
(correct or not; or only correct ones). Every policy uses the same per-prefix seeds, so a prefix
probed by two gets the same continuations; binary search can disagree with scoring every prefix
on the first bad step only where the scores are not monotone. Token counts are deterministic, so
one run of each suffices (no timing involved).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory.backends.prompts import build_prompt  # noqa: E402
from tracefactory.backends.scorers import MonteCarloScorer, StepItem  # noqa: E402
from tracefactory.backends.vllm_teacher import VLLMTeacher  # noqa: E402
from tracefactory.config import DEMO_PLAIN_CONFIG, SamplingConfig, load_config  # noqa: E402
from tracefactory.grading.steps import split_steps  # noqa: E402
from tracefactory.grading.verify import judge_texts  # noqa: E402
from tracefactory.stages.rollout import request_seed  # noqa: E402

# (search, label): soft = fixed n samples per probe; hard = sampled until the first success (at most n)
POLICIES = [("all", "soft"), ("all", "hard"), ("binary", "soft"), ("binary", "hard"), ("scan", "hard")]
BASELINE = "all/soft"


def traces(teacher, cfg, args) -> tuple[list[StepItem], dict]:
    """Rollouts as in a run (`--rollouts` per problem, default the demo's n); the first two finished
    ones of each problem (or, with --correct-only, every correct one — the traces a run scores) with
    at least `--min-steps` steps are scored, and all of them form the pool of already-sampled
    continuations the scorer may reuse."""
    rows = [json.loads(x) for x in (ROOT / "data/demo/problems.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["level"] >= 4]
    seeds = [request_seed(cfg.sampling.seed, r["id"]) for r in rows]
    params = SamplingConfig(
        n=args.rollouts or cfg.sampling.n, temperature=cfg.sampling.temperature, max_tokens=cfg.sampling.max_tokens
    )
    outs = [
        r.completions
        for r in teacher.generate([build_prompt(r["question"], cfg.prompt) for r in rows], params.n, params, seeds)
    ]
    verdicts = judge_texts([(r["answer"], c.text) for r, cs in zip(rows, outs, strict=True) for c in cs], workers=2)
    graded, k = [], 0
    for cs in outs:
        graded.append([(c, ok) for c, ok in zip(cs, verdicts[k : k + len(cs)], strict=True)])
        k += len(cs)
    pool = {r["id"]: [(tuple(split_steps(c.text)), ok) for c, ok in g] for r, g in zip(rows, graded, strict=True)}
    picked = [
        [c for c, ok in g if ok] if args.correct_only else [c for c, _ in g if c.finish_reason == "stop"][:2]
        for g in graded
    ]
    items = [
        StepItem(r["id"], r["question"], r["answer"], tuple(split_steps(c.text)), seed=s)
        for r, s, cs in zip(rows, seeds, picked, strict=True)
        for c in cs
    ]
    return [it for it in items if len(it.steps) >= args.min_steps][: args.traces], pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=60)
    ap.add_argument("--n", type=int, default=4, help="continuations per probed prefix")
    ap.add_argument("--min-steps", type=int, default=6)
    ap.add_argument(
        "--correct-only",
        action="store_true",
        help="score only correct-answer traces (what a run's step_score stage sees)",
    )
    ap.add_argument("--rollouts", type=int, default=None, help="completions per problem (default: the demo's n)")
    ap.add_argument(
        "--reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count rollout completions that share a prefix as free continuations",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_search.json")
    args = ap.parse_args()
    cfg = load_config(DEMO_PLAIN_CONFIG)  # the plain teacher: the figures in bench/README.md are its
    teacher = VLLMTeacher(cfg.teacher, progress=False)
    items, pool = traces(teacher, cfg, args)
    params = SamplingConfig(n=args.n, temperature=cfg.sampling.temperature, max_tokens=cfg.sampling.max_tokens)
    results = {}
    for search, label in POLICIES:
        reuse = pool if args.reuse else None
        scorer = MonteCarloScorer(
            teacher, lambda pairs: judge_texts(pairs, workers=2), cfg.prompt, params, search, reuse, label
        )
        scores = scorer.score(items)
        results[f"{search}/{label}"] = {
            "tokens_per_trace": sum(s.tokens for s in scores) / len(items),
            "probes_per_trace": sum(s.probes for s in scores) / len(items),
            "first_bad": [s.first_bad_step for s in scores],
        }
    teacher.close()
    base = results[BASELINE]
    summary = {
        "traces": len(items),
        "correct_only": args.correct_only,
        "mean_steps": sum(len(i.steps) for i in items) / len(items),
        "n": args.n,
        "reuse": args.reuse,
        "baseline": BASELINE,
        **{
            f"token_ratio_baseline_over_{k}": base["tokens_per_trace"] / r["tokens_per_trace"]
            for k, r in results.items()
            if k != BASELINE
        },
        **{
            f"same_first_bad_step_{k}": sum(a == b for a, b in zip(base["first_bad"], r["first_bad"], strict=True))
            / len(items)
            for k, r in results.items()
            if k != BASELINE
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "detail": results}, indent=2) + "\n")
    print(f"baseline: {BASELINE} (every prefix, n={args.n} continuations each — Math-Shepherd)")
    print("| search / label | tokens / trace | probes / trace | baseline tokens ÷ these | same first bad step |")
    print("|---|---|---|---|---|")
    for k, r in results.items():
        same = sum(a == b for a, b in zip(base["first_bad"], r["first_bad"], strict=True)) / len(items)
        print(
            f"| {k} | {r['tokens_per_trace']:.0f} | {r['probes_per_trace']:.2f} | "
            f"{base['tokens_per_trace'] / r['tokens_per_trace']:.2f} | {same:.1%} |"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
