"""Monte-Carlo step scoring: teacher tokens per scored trace, binary search vs every prefix.

    .venv/bin/python bench/step_search.py [--traces 60] [--n 4]

Traces are the embedded teacher's own completions of level-4/5 demo problems with >= 6 steps
(correct or not). Both searches use the same per-prefix seeds, so a prefix probed by both gets the
same continuations; they can disagree on the first bad step only where the scores are not
monotone. Token counts are deterministic, so one run of each suffices (no timing involved).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory.backends.scorers import MonteCarloScorer, StepItem  # noqa: E402
from tracefactory.backends.vllm_teacher import VLLMTeacher  # noqa: E402
from tracefactory.config import SamplingConfig, load_config  # noqa: E402
from tracefactory.prompts import build_prompt  # noqa: E402
from tracefactory.stages.rollout import request_seed  # noqa: E402
from tracefactory.steps import split_steps  # noqa: E402
from tracefactory.verify import judge_texts  # noqa: E402


def traces(teacher, cfg, limit: int) -> tuple[list[StepItem], dict]:
    """Rollouts as in a run (n = cfg.sampling.n); the first two of each problem are scored, and
    all of them form the pool of already-sampled continuations the scorer may reuse."""
    rows = [json.loads(x) for x in (ROOT / "data/demo/problems.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["level"] >= 4]
    seeds = [request_seed(cfg.sampling.seed, r["id"]) for r in rows]
    outs = teacher.generate([build_prompt(r["question"], cfg.prompt) for r in rows], cfg.sampling.n, cfg.sampling,
                            seeds)
    pool = {r["id"]: [(tuple(split_steps(c.text)), ok) for c, ok in
                      zip(cs, judge_texts([(r["answer"], c.text) for c in cs]))] for r, cs in zip(rows, outs)}
    items = [StepItem(r["id"], r["question"], r["answer"], tuple(split_steps(c.text)), seed=s)
             for r, s, cs in zip(rows, seeds, outs) for c in cs[:2] if c.finish_reason == "stop"]
    return [it for it in items if len(it.steps) >= 6][:limit], pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=60)
    ap.add_argument("--n", type=int, default=4, help="continuations per probed prefix")
    ap.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                    help="count rollout completions that share a prefix as free continuations")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "step_search.json")
    args = ap.parse_args()
    cfg = load_config()
    teacher = VLLMTeacher(cfg.teacher, progress=False)
    items, pool = traces(teacher, cfg, args.traces)
    params = SamplingConfig(n=args.n, temperature=cfg.sampling.temperature, max_tokens=cfg.sampling.max_tokens)
    results = {}
    for search in ("all", "binary"):
        reuse = pool if args.reuse else None
        scorer = MonteCarloScorer(teacher, lambda pairs: judge_texts(pairs, workers=2), cfg.prompt, params, search,
                                  reuse)
        scores = scorer.score(items)
        results[search] = {"tokens_per_trace": sum(s.tokens for s in scores) / len(items),
                           "probes_per_trace": sum(s.probes for s in scores) / len(items),
                           "first_bad": [s.first_bad_step for s in scores]}
    teacher.close()
    same = sum(a == b for a, b in zip(results["all"]["first_bad"], results["binary"]["first_bad"])) / len(items)
    summary = {"traces": len(items), "mean_steps": sum(len(i.steps) for i in items) / len(items), "n": args.n,
               "reuse": args.reuse,
               "tokens_per_trace_all": results["all"]["tokens_per_trace"],
               "tokens_per_trace_binary": results["binary"]["tokens_per_trace"],
               "token_ratio_all_over_binary": results["all"]["tokens_per_trace"] / results["binary"]["tokens_per_trace"],
               "same_first_bad_step": same}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "detail": results}, indent=2) + "\n")
    print("| search | tokens / trace | probes / trace |\n|---|---|---|")
    for search in ("all", "binary"):
        r = results[search]
        print(f"| {search} | {r['tokens_per_trace']:.0f} | {r['probes_per_trace']:.2f} |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
