"""How good is an embedded teacher? Accuracy by level on held-out generator problems, greedy and sampled, and the
shape of what it writes (think blocks closed / left open, corrected slips, length).

    .venv/bin/python bench/teacher_quality.py data/teacher-plain data/teacher   # the table in README.md
    .venv/bin/python bench/teacher_quality.py data/teacher --per-level 50 --samples 8

The problems come from `synth.generate` with a seed no teacher trained on (training draws its problems from a
`random.Random` stream of its own; a templated level-1 question can still coincide with one seen in training,
which is why this is a relative gauge of teachers trained the same way, not an absolute held-out score). Answers
are read as the factory grades them: after `</think>` when the model's template opens a think block. Models run one
after the other in one process (one vLLM engine each), so their figures compare.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(model: str, problems, samples: int, temperature: float, max_tokens: int) -> dict:
    from tracefactory.backends.vllm_teacher import VLLMTeacher
    from tracefactory.config import SamplingConfig, TeacherConfig
    from tracefactory.grading.think import dissect
    from tracefactory.training.student import solves, think_of

    teacher = VLLMTeacher(TeacherConfig(model=model, max_model_len=512), progress=False)
    try:
        prompts = [[{"role": "user", "content": p.question}] for p in problems]
        think = think_of(teacher)
        runs = {
            "greedy": teacher.generate(prompts, 1, SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens)),
            "sampled": teacher.generate(
                prompts,
                samples,
                SamplingConfig(n=samples, temperature=temperature, max_tokens=max_tokens),
                seeds=list(range(len(prompts))),
            ),
        }
    finally:
        teacher.close()
    out: dict = {"model": model, "thinks": bool(think.opener)}
    for kind, results in runs.items():
        right, total = defaultdict(int), defaultdict(int)
        shape = defaultdict(int)
        for p, res in zip(problems, results, strict=True):
            for c in res.completions:
                right[p.level] += solves(c.text, p, think)
                total[p.level] += 1
                shape["completions"] += 1
                shape["tokens"] += c.tokens
                shape["truncated"] += c.finish_reason == "length"
                shape["wait"] += "Wait," in c.text
                anatomy = dissect(c.text, think.opener, think.mode)
                shape["unclosed"] += anatomy.closed is False and c.finish_reason != "length"
        out[kind] = {
            "by_level": {lv: round(right[lv] / total[lv], 3) for lv in sorted(total)},
            "overall": round(sum(right.values()) / max(1, sum(total.values())), 3),
            "mean_tokens": round(shape["tokens"] / max(1, shape["completions"]), 1),
            "truncated": shape["truncated"],
            "unclosed": shape["unclosed"],
            "with_wait": shape["wait"],
            "completions": shape["completions"],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model folders (e.g. data/teacher-plain data/teacher)")
    ap.add_argument("--per-level", type=int, default=40, help="problems per level (levels 1-5)")
    ap.add_argument("--seed", type=int, default=777, help="the generator's seed for the problems")
    ap.add_argument("--samples", type=int, default=8, help="sampled completions per problem")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args(argv)

    from tracefactory.training.synth import generate

    problems = generate(args.per_level, args.seed)
    rows = [measure(m, problems, args.samples, args.temperature, args.max_tokens) for m in args.models]
    print(
        f"{len(problems)} problems ({args.per_level} a level, seed {args.seed}); sampled: n={args.samples}, "
        f"T={args.temperature}, max_tokens={args.max_tokens}"
    )
    head = "model | thinks | kind | L1 | L2 | L3 | L4 | L5 | all | mean tokens | truncated | unclosed | with Wait"
    print(head)
    print("|".join("---" for _ in head.split("|")))
    for r in rows:
        for kind in ("greedy", "sampled"):
            k = r[kind]
            levels = " | ".join(f"{k['by_level'].get(lv, float('nan')):.3f}" for lv in range(1, 6))
            print(
                f"{r['model']} | {r['thinks']} | {kind} | {levels} | {k['overall']:.3f} | {k['mean_tokens']} | "
                f"{k['truncated']}/{k['completions']} | {k['unclosed']} | {k['with_wait']}"
            )


if __name__ == "__main__":
    main()
