"""Proof on a student: does a tracefactory dataset teach better than the raw rollouts, at equal training tokens?

    make student-data && make student   # README.md's table: --preset discriminate --jobs 2 (~10 + ~50 min, 2 cores)
    .venv/bin/python bench/student.py --run runs/student-data   # all six arms at the default 150 steps
    .venv/bin/python bench/student.py --run runs/demo-plain --seeds 1,2,3   # make demo-plain: the plain teacher

`--preset discriminate` trains arms a, b and d (the claims the recipe rests on) for 1,000 steps each, three seeds
per arm: compute of the teacher's order per student, where 150 steps left every arm at the floor. `--jobs N`
trains N students side by side, one process each (two on two cores: x1.26 the throughput of one student on both).

From one finished run directory, six training sets (arms) are cut to one budget of target tokens — the smallest
arm's — and a small student is fine-tuned on each, from one shared checkpoint that has seen only arithmetic
drills (the teacher's architecture, `training.teacher --drill-share 1`: never a word problem), with the same steps,
batch size (in target tokens) and learning rate for every arm, once per seed:

    a  every rollout of the original problems, right or wrong
    b  every correct-answer rollout
    c  one random correct-answer rollout per solved problem
    d  tracefactory's `dataset` (shortest correct, step-filtered) of the original problems, in curriculum order
    e  the rows of (d), shuffled (isolates the curriculum)
    f  the whole `dataset`, rewritten variants included, in curriculum order

Each student answers held-out generator problems (a seed no training data came from, minus any question the run
holds) greedily under vLLM: one engine, each student's weights reloaded in place. The table gives training tokens,
accuracy by level, accuracy with a 95% bootstrap interval (training seeds and problems resampled), mean answer
length, and `arithmetic` — the share of 100 bare level-1/2 equations (`9 + 8`) a model completes right, i.e.
whether fine-tuning left the base's arithmetic intact; the drills-only base and the teacher are reference rows;
paired differences (same seeds and problems resampled for both arms) answer the recipe's claims. The seed decides
which rows a budget keeps and the order of the shuffled arms (a, b, c, e);
every student starts from the same base. An arm whose pool fits the budget whole in a fixed order (d, f) trains
the same way under every seed, so its interval comes from the evaluation problems alone. Results: `--out` (JSON)
and a plot beside it (needs matplotlib: the `release` extra). Students are kept under `--work` and reused when
their base, rows, settings and seed match (a rerun after an interruption only trains what is missing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracefactory import console  # noqa: E402
from tracefactory.errors import ConfigError  # noqa: E402
from tracefactory.training.student import (  # noqa: E402
    ARMS,
    Evaluator,
    TrainSettings,
    as_json,
    base_checkpoint,
    drill_problems,
    finetune_all,
    held_out_problems,
    paired_difference,
    run_questions,
    summary,
    training_sets,
)

TEACHER = ROOT / "data" / "teacher-plain"  # the students share its architecture (no think tags) and its traces
BASE_SEED = 5
# (better arm, worse arm, the claim it tests)
CLAIMS = [
    ("d", "a", "correct-only, shortest, step-filtered beats all rollouts"),
    ("d", "b", "one shortest step-filtered trace beats every correct trace"),
    ("d", "c", "shortest step-filtered beats one random correct trace"),
    ("b", "a", "correct-only beats all rollouts"),
    ("d", "e", "curriculum order beats shuffled"),
    ("f", "d", "rewritten variants help"),
]


# Named settings; flags given beside a preset override it.
PRESETS = {
    # the arms the recipe's claims rest on, at teacher-scale training (the teacher trained 600 steps of 32
    # problems): enough steps to lift a student off the floor, three seeds each
    "discriminate": {"arms": "a,b,d", "seeds": "1,2,3", "steps": 1000},
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="named settings: " + "; ".join(
        f"{name} = " + " ".join(f"--{k} {v}" for k, v in p.items()) for name, p in PRESETS.items()))  # fmt: skip
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "student-data", help="finished run directory")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms (default: %(default)s)")
    ap.add_argument("--seeds", default="1,2,3", help="training seeds, comma-separated (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=TrainSettings.steps, help="optimizer steps per student")
    ap.add_argument("--batch-tokens", type=int, default=TrainSettings.batch_tokens, help="target tokens per step")
    ap.add_argument("--lr", type=float, default=TrainSettings.lr, help="peak learning rate (cosine, warm-up)")
    ap.add_argument("--budget", type=int, help="target tokens per arm (default and ceiling: the smallest arm's)")
    ap.add_argument("--base-steps", type=int, default=400, help="arithmetic-drill steps of the shared base")
    ap.add_argument("--eval-per-level", type=int, default=60, help="held-out problems per level (levels 1-5)")
    ap.add_argument("--eval-seed", type=int, default=8080, help="generator seed of the held-out problems")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "student", help="base and students go here")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "student.json", help="results JSON")
    ap.add_argument("--jobs", type=int, default=1, help="students trained side by side, one process each")
    ap.add_argument("--device", default="cpu", help="torch device the students train on: cpu, cuda (a GPU where lent)")
    ap.add_argument("--verbose", action="store_true", help="vLLM's and the libraries' logs on the terminal too")
    preset = ap.parse_known_args(argv)[0].preset
    if preset:
        ap.set_defaults(**PRESETS[preset])
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs: at least 1")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not args.seeds:
        ap.error("--seeds: at least one seed")
    return args


def token_counter(path: Path):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(path)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS


def main(argv=None) -> dict:
    import contextlib

    args = parse_args(argv)
    log = args.work / "bench.log"
    console.setup_logging(args.verbose)
    with contextlib.nullcontext() if args.verbose else console.quiet(log):
        if not args.verbose:
            print(f"(vLLM's and the libraries' logs: {log})", file=console.err())
        try:
            result = measure(args, argv)
        except ConfigError as exc:
            print(f"error: {exc}", file=console.err())
            raise SystemExit(2) from None
    print(table(result), file=console.out())
    try:
        plot(result, args.out.with_suffix(".png"))
    except ImportError:
        print("(no plot: matplotlib is in the `release` extra)", file=console.err())
    return result


def measure(args: argparse.Namespace, argv) -> dict:
    from tqdm import tqdm

    settings = TrainSettings(steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr)
    count = token_counter(TEACHER)
    t0 = time.perf_counter()

    # One budget for every arm and seed: the smallest arm's under any seed (or --budget, if smaller).
    sets, budget = training_sets(args.run, args.arms, args.seeds, count, args.budget)
    print(f"run {args.run}: budget {budget} target tokens per arm", file=console.err())
    for arm in args.arms:
        print(f"  {arm}: {len(sets[args.seeds[0]][arm])} rows  ({ARMS[arm]})", file=console.err())

    base = base_checkpoint(args.work / "base", args.base_steps, seed=BASE_SEED)
    t_base = time.perf_counter()

    students = [(arm, seed) for arm in args.arms for seed in args.seeds]
    total = len(students) * settings.steps
    with tqdm(total=total, desc="training students", unit="step", file=console.err(), dynamic_ncols=True) as bar:
        made = finetune_all(
            base,
            [(sets[seed][arm], args.work / f"{arm}-s{seed}", seed) for arm, seed in students],
            settings,
            jobs=args.jobs,
            tick=lambda: bar.update(),
            device=args.device,
        )
    trained: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    for (arm, _), record in zip(students, made, strict=True):
        trained[arm].append(record)
    t_train = time.perf_counter()

    problems, removed = held_out_problems(args.eval_per_level, args.eval_seed, run_questions(args.run))
    evaluator = Evaluator(base)  # the engine starts with the first model scored
    try:
        scored: dict[str, list] = {}
        arithmetic: dict[str, list[float]] = {}
        drills = drill_problems(100, args.eval_seed)
        jobs = [("base", base), ("teacher", TEACHER)] + [
            (arm, args.work / f"{arm}-s{seed}") for arm in args.arms for seed in args.seeds
        ]
        with tqdm(total=len(jobs), desc="evaluating", unit="model", file=console.err(), dynamic_ncols=True) as bar:
            for name, weights in jobs:
                scored.setdefault(name, []).append(evaluator.score(weights, problems))
                arithmetic.setdefault(name, []).append(evaluator.arithmetic(weights, drills))
                bar.update()
    finally:
        evaluator.close()
    t_eval = time.perf_counter()

    rows = [summary("base", scored["base"], [{}]), summary("teacher", scored["teacher"], [{}])]
    rows[0]["what"], rows[1]["what"] = "drills-only base (reference)", "the teacher (reference)"
    rows += [summary(arm, scored[arm], trained[arm]) for arm in args.arms]
    for row in rows:  # bare level-1/2 equations right (100, greedy): is the base's arithmetic still there?
        row["arithmetic"] = sum(arithmetic[row["arm"]]) / len(arithmetic[row["arm"]])
    correct = {arm: [[s.correct for s in run] for run in scored[arm]] for arm in args.arms}
    claims = []
    for better, worse, claim in CLAIMS:
        if better in correct and worse in correct:
            diff, lo, hi = paired_difference(correct[better], correct[worse])
            verdict = "holds" if lo > 0 else "reversed" if hi < 0 else "not shown"
            claims.append({"arms": f"{better}-{worse}", "claim": claim, "difference": diff, "ci95": [lo, hi],
                           "verdict": verdict})  # fmt: skip
    result = {
        "command": "python bench/student.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "run": str(args.run),
        "budget_target_tokens": budget,
        "settings": {
            **settings.__dict__,
            "base_steps": args.base_steps,
            "base_seed": BASE_SEED,
            "seeds": args.seeds,
            "jobs": args.jobs,
            "device": args.device,
        },  # fmt: skip
        "held_out": {
            "seed": args.eval_seed,
            "per_level": args.eval_per_level,
            "problems": len(problems),
            "ids": " ".join(p.id for p in problems),
            "removed_as_in_run": removed,
        },
        "rows": rows,
        "claims": claims,
        "seconds": {
            "base": round(t_base - t0, 1),
            "training": round(t_train - t_base, 1),
            "evaluation_with_engine_start": round(t_eval - t_train, 1),
            "total": round(t_eval - t0, 1),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(as_json(result) + "\n")
    return result


def table(result: dict) -> str:
    """The results as Markdown (what README.md shows)."""
    levels = sorted({lv for r in result["rows"] for lv in r["accuracy_by_level"]})
    head = ["arm", "what", "rows", "target tokens", "epochs", "final loss", *(f"L{lv}" for lv in levels),
            "accuracy (95% CI)", "answer tokens", "arithmetic"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        t = [seed for seed in r["trained"] if seed]
        rows = "/".join(sorted({str(seed["rows"]) for seed in t})) if t else "-"
        tokens = f"{min(seed['target_tokens'] for seed in t)}" if t else "-"
        epochs = f"{sum(seed['epochs'] for seed in t) / len(t):.1f}" if t else "-"
        loss = f"{sum(seed['final_loss'] for seed in t) / len(t):.3f}" if t else "-"
        acc = f"{r['accuracy']:.3f} ({r['ci95'][0]:.3f}–{r['ci95'][1]:.3f})"
        by_level = [f"{r['accuracy_by_level'].get(lv, float('nan')):.2f}" for lv in levels]
        cells = [r["arm"], r["what"], rows, tokens, epochs, loss, *by_level, acc, f"{r['mean_answer_tokens']:.0f}",
                 f"{r['arithmetic']:.2f}" if "arithmetic" in r else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| arms | claim | difference (95% CI) | verdict |", "|---|---|---|---|"]
    for c in result["claims"]:
        diff = f"{c['difference']:+.3f} ({c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f})"
        lines.append(f"| {c['arms']} | {c['claim']} | {diff} | {c['verdict']} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["arm"] not in ("base", "teacher")]
    refs = {r["arm"]: r["accuracy"] for r in result["rows"] if r["arm"] in ("base", "teacher")}
    fig, ax = plt.subplots(figsize=(8, 4.4))
    x = range(len(rows))
    acc = [r["accuracy"] for r in rows]
    err = [
        [a - r["ci95"][0] for a, r in zip(acc, rows, strict=True)],
        [r["ci95"][1] - a for a, r in zip(acc, rows, strict=True)],
    ]
    ax.bar(x, acc, yerr=err, capsize=4, color=["#4c72b0" if r["arm"] in "def" else "#999999" for r in rows])
    for name, style in (("teacher", "--"), ("base", ":")):
        if name in refs:
            ax.axhline(refs[name], color="black", linestyle=style, linewidth=1, label=f"{name} {refs[name]:.2f}")
    ax.set_xticks(list(x), [f"{r['arm']}\n{textwrap.fill(r['what'], 18)}" for r in rows], fontsize=7)
    ax.set_ylabel("held-out accuracy (greedy)")
    ax.set_title(
        f"students at {result['budget_target_tokens']} target tokens, {len(result['settings']['seeds'])} seeds"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
