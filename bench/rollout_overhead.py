"""Rollout-stage overhead: output-token throughput of tracefactory's rollout vs the raw engine.

    .venv/bin/python bench/rollout_overhead.py [--problems 300] [--pairs 3] [--skip-server]

Part 1 (in-process): `rollout()` with the vLLM teacher vs a bare `vllm.LLM.generate` on the same
rendered prompts, SamplingParams (n=K, the same per-request seeds) and engine.
Part 2 (server): `rollout()` with the OpenAI-compatible teacher vs bare async HTTP requests (n=K,
same concurrency) to the same loopback vLLM server.
Baseline and candidate alternate (A B A B ...) in one process; the ratios of each pair are reported
(mean, min, max) because this machine's throughput drifts ±6% even inside one process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory.backends.openai_teacher import OpenAITeacher  # noqa: E402
from tracefactory.backends.prompts import build_prompt  # noqa: E402
from tracefactory.backends.server import local_server  # noqa: E402
from tracefactory.backends.vllm_teacher import VLLMTeacher  # noqa: E402
from tracefactory.config import EMBEDDED_TEACHER, load_config  # noqa: E402
from tracefactory.stages.rollout import request_seed, rollout  # noqa: E402

SERVED = "arith-tiny"


def demo_problems(n: int) -> pl.DataFrame:
    rows = [json.loads(x) for x in (ROOT / "data/demo/problems.jsonl").read_text().splitlines()]
    rows = rows[:: max(1, len(rows) // n)][:n]
    return pl.DataFrame({"problem_id": [r["id"] for r in rows], "question": [r["question"] for r in rows]})


def alternate(baseline, candidate, pairs: int) -> dict:
    """Run baseline/candidate alternately; each returns output tokens. Ratio = candidate / baseline tok/s."""
    runs = []
    for i in range(pairs):
        pair = {}
        for name, fn in (
            (("baseline", baseline), ("candidate", candidate))
            if i % 2 == 0
            else (("candidate", candidate), ("baseline", baseline))
        ):
            t0 = time.perf_counter()
            tokens = fn()
            pair[name] = tokens / (time.perf_counter() - t0)
            pair[f"{name}_tokens"] = tokens  # same seeds: both sides must generate the same tokens
        runs.append(pair)
        print(
            f"  pair {i + 1}: baseline {pair['baseline']:.0f} tok/s, candidate {pair['candidate']:.0f} tok/s, "
            f"ratio {pair['candidate'] / pair['baseline']:.3f}",
            flush=True,
        )
    ratios = [r["candidate"] / r["baseline"] for r in runs]
    return {
        "pairs": runs,
        "ratio_mean": statistics.mean(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "baseline_tok_s_mean": statistics.mean(r["baseline"] for r in runs),
    }


def bench_in_process(cfg, problems: pl.DataFrame, pairs: int) -> dict:
    from vllm import SamplingParams

    teacher = VLLMTeacher(cfg.teacher, progress=False)
    llm, s = teacher.llm, cfg.sampling
    texts = [teacher.render(build_prompt(q, cfg.prompt)) for q in problems["question"]]
    seeds = [request_seed(s.seed, pid) for pid in problems["problem_id"]]

    def raw():
        sps = [
            SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=x)
            for x in seeds
        ]
        return sum(len(o.token_ids) for out in llm.generate(texts, sps, use_tqdm=False) for o in out.outputs)

    def stage():
        return rollout(problems, cfg.rollout, teacher)[1].tokens

    raw()  # warm-up: first compile / caches
    try:
        return alternate(raw, stage, pairs)
    finally:
        teacher.close()  # free the cores for the server part


def bench_server(cfg, problems: pl.DataFrame, pairs: int) -> dict:
    log = ROOT / "bench" / "results" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with local_server(str(EMBEDDED_TEACHER), SERVED, log) as url:
        scfg = load_config(
            None,
            {
                "teacher.kind": "openai",
                "teacher.base_url": url,
                "teacher.model": SERVED,
                "teacher.max_concurrency": cfg.teacher.max_concurrency,
            },
        )
        teacher, s = OpenAITeacher(scfg.teacher, progress=False), scfg.sampling
        seeds = [request_seed(s.seed, pid) for pid in problems["problem_id"]]
        bodies = [
            {
                "model": SERVED,
                "messages": build_prompt(q, scfg.prompt),
                "n": s.n,
                "seed": x,
                "temperature": s.temperature,
                "top_p": s.top_p,
                "max_tokens": s.max_tokens,
            }
            for q, x in zip(problems["question"], seeds, strict=True)
        ]

        async def raw_async():
            sem = asyncio.Semaphore(scfg.teacher.max_concurrency)
            async with httpx.AsyncClient(
                base_url=url, timeout=600, limits=httpx.Limits(max_connections=scfg.teacher.max_concurrency)
            ) as c:

                async def one(b):
                    async with sem:
                        return (await c.post("/chat/completions", json=b)).json()["usage"]["completion_tokens"]

                return sum(await asyncio.gather(*(one(b) for b in bodies)))

        def stage():
            return rollout(problems, scfg.rollout, teacher)[1].tokens

        asyncio.run(raw_async())  # warm-up
        return alternate(lambda: asyncio.run(raw_async()), stage, pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rollout_overhead.json")
    args = ap.parse_args()
    cfg = load_config()
    problems = demo_problems(args.problems)
    results = {"problems": len(problems), "n": cfg.sampling.n, "max_tokens": cfg.sampling.max_tokens}
    if not args.skip_in_process:
        print(f"in-process: rollout() vs LLM.generate, {len(problems)} problems x n={cfg.sampling.n}", flush=True)
        results["in_process"] = bench_in_process(cfg, problems, args.pairs)
    if not args.skip_server:
        print("server: rollout() with OpenAITeacher vs raw HTTP, same server", flush=True)
        results["server"] = bench_server(cfg, problems, args.pairs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\n| part | baseline tok/s | ratio mean | min | max | goal |\n|---|---|---|---|---|---|")
    for part, goal in (("in_process", 0.95), ("server", 0.90)):
        if part in results:
            r = results[part]
            print(
                f"| {part} | {r['baseline_tok_s_mean']:.0f} | {r['ratio_mean']:.3f} | {r['ratio_min']:.3f} | "
                f"{r['ratio_max']:.3f} | >= {goal} |"
            )
    print(
        json.dumps(
            {
                k: {kk: v[kk] for kk in ("ratio_mean", "ratio_min", "ratio_max")}
                for k, v in results.items()
                if isinstance(v, dict)
            }
        )
    )


if __name__ == "__main__":
    main()
