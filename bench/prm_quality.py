"""Step scorers against the truth: Monte-Carlo labels, the trained PRM, and an upper bound.

    make prm-eval && .venv/bin/python bench/prm_quality.py [--prm data/prm]

The evaluation run (`make prm-eval`: 300 fresh generator problems, seed 4242 — never used for the teacher
(1234), the demo (2026) or the PRM's training — no rewriting, Monte-Carlo step scores on every trace with the
demo's settings) is scored against exact labels: a generator problem has one reference chain, so a step is
good while the trace follows it, the first departure is the first bad step, and later steps are left out, as in
training. On its traces:

- step AUROC against the exact labels, and ProcessBench's first-error F1 (all traces, right or wrong answer);
- the trace filter (a trace is flagged when some step is bad: Monte-Carlo value 0, PRM probability at or below
  the threshold `train-prm` calibrated on its training run and wrote into the model's `training.json`),
  precision and recall on the correct-answer traces, where the factory applies it;
- cost per scored correct-answer trace: teacher tokens (Monte-Carlo, fresh — no cache, the run's rollouts
  reused as free continuations, as in a run) or PRM forward tokens, and wall-clock per trace, timed in this
  process on the same distinct traces (engine start excluded).

Rows: Monte-Carlo (scan, hard, n=8), the PRM trained on Monte-Carlo labels (`--prm`, made by `make prm` from
the demo run), and a PRM trained the same way on the exact labels of the same run's original problems (an
upper bound for what better labels would give).

With a larger Monte-Carlo scored run there (`--filter-run`; README.md's figures: `make student-data` as it was then,
1,000 fresh problems of seed 3131 with variants — it now makes 3,000, without), the filter's flagged / precision
(95% Wilson interval) / recall on its correct-answer traces too: about four times as many traces with a wrong step as
the evaluation run's 26.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from tracefactory.backends.scorers import StepItem  # noqa: E402
from tracefactory.backends.step_eval import LabelledTrace, auroc, first_error_f1, reference_first_bad  # noqa: E402
from tracefactory.store.schema import StepScores  # noqa: E402
from tracefactory.training.prm import Example, data_hash, train  # noqa: E402

PROBLEMS = ROOT / "data" / "demo" / "problems.jsonl"


def labelled_traces(run: Path, problems: Path, skip_questions: set[str] = frozenset()) -> list[dict]:
    """Every step-scored trace of the run's problems that `problems` has a reference solution for (minus those
    whose question is in `skip_questions`), with its exact first bad step and the run's Monte-Carlo scores."""
    ref = {r["id"]: r for r in map(json.loads, problems.read_text().splitlines())}
    questions = dict(pl.read_parquet(run / "problems").select("problem_id", "question").iter_rows())
    rows = pl.read_parquet(run / "rollouts").filter(pl.col("step_scores").is_not_null())
    out = []
    cols = ("problem_id", "steps", "step_scores", "first_bad_step", "correct", "seed")
    for r in rows.select(*cols).iter_rows(named=True):
        pid = r["problem_id"]
        if pid not in ref or ref[pid]["question"] != questions[pid] or ref[pid]["question"] in skip_questions:
            continue  # a variant (no reference chain), or a question the other run also has
        truth = reference_first_bad(r["steps"], ref[pid]["solution"].splitlines())
        out.append(r | {"question": ref[pid]["question"], "gold": ref[pid]["answer"], "truth": truth})
    return out


def exact_labels(steps: list[str], truth: int | None) -> tuple[int, ...]:
    kept = len(steps) if truth is None else truth + 1
    return tuple(-1 if i == truth else 1 for i in range(kept))


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion hits/n."""
    if not n:
        return None
    p = hits / n
    mid, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


def filter_metrics(traces: list[dict], results: list[StepScores]) -> dict:
    """The trace filter on the correct-answer traces: flagged, precision (with its 95% interval), recall."""
    tp = fp = fn = 0
    for t, r in zip(traces, results, strict=True):
        if t["correct"] and r.scores:
            flagged, wrong = r.first_bad_step is not None, t["truth"] is not None
            tp, fp, fn = tp + (flagged and wrong), fp + (flagged and not wrong), fn + (wrong and not flagged)
    return {
        "flagged": tp + fp,
        "precision": tp / (tp + fp) if tp + fp else None,
        "precision_ci": wilson(tp, tp + fp),
        "recall": tp / (tp + fn) if tp + fn else None,
        "wrong_step_traces": tp + fn,
    }


def metrics(traces: list[dict], results: list[StepScores]) -> dict:
    pos, neg = [], []
    labelled, scored = [], []
    for t, r in zip(traces, results, strict=True):
        if not r.scores:
            continue
        labels = exact_labels(t["steps"], t["truth"])
        for lbl, s in zip(labels, r.scores, strict=True):
            (pos if lbl == 1 else neg).append(s)
        labelled.append(
            LabelledTrace(StepItem(t["problem_id"], t["question"], t["gold"], tuple(t["steps"])), labels, False)
        )
        scored.append(r)
    return {"step_auroc": auroc(pos, neg), **first_error_f1(labelled, scored), **filter_metrics(traces, results)}


def distinct_items(traces: list[dict]) -> list[StepItem]:
    seen = {}
    for t in traces:
        seen.setdefault(
            (t["problem_id"], tuple(t["steps"])),
            StepItem(t["problem_id"], t["question"], t["gold"], tuple(t["steps"]), int(t["seed"] or 0)),
        )
    return list(seen.values())


def timed(scorer, items: list[StepItem]) -> tuple[list[StepScores], float]:
    t0 = time.perf_counter()
    res = scorer.score(items)
    return res, time.perf_counter() - t0


def prm_scores(
    model: Path, traces: list[dict], sample: list[StepItem], dtype: str = "auto"
) -> tuple[list[StepScores], dict]:
    """The PRM's scores of `traces`, its first bad step the first at or below its calibrated threshold."""
    from tracefactory.backends.prm import VLLMPRMScorer

    threshold = json.loads((model / "training.json").read_text())["threshold"]
    scorer = VLLMPRMScorer(str(model), system=None, bad_below=threshold, dtype=dtype)
    try:
        scorer.start()
        scorer.score(sample[:8])  # warm-up
        res, secs = timed(scorer, sample)
        tokens = sum(len(scorer._tok(scorer.format(it), add_special_tokens=False)["input_ids"]) for it in sample)
        by_key = {(it.problem_id, it.steps): r for it, r in zip(sample, res, strict=True)}
        missing = [it for it in distinct_items(traces) if (it.problem_id, it.steps) not in by_key]
        for it, r in zip(missing, scorer.score(missing) if missing else [], strict=True):
            by_key[(it.problem_id, it.steps)] = r
    finally:
        scorer.close()
    cost = {"unit": "PRM forward tokens", "per_trace": tokens / len(sample), "ms_per_trace": 1000 * secs / len(sample)}
    return [by_key[(t["problem_id"], tuple(t["steps"]))] for t in traces], cost


def mc_cost(run: Path, sample: list[StepItem]) -> dict:
    from tracefactory.backends.factory import make_scorer, make_teacher
    from tracefactory.config import DEMO_PLAIN_CONFIG, load_config

    cfg = load_config(DEMO_PLAIN_CONFIG)  # the teacher whose traces the PRM and these runs hold
    teacher = make_teacher(cfg.teacher)
    try:
        teacher.start()
        scorer = make_scorer(cfg, teacher, pl.read_parquet(run / "rollouts"))
        res, secs = timed(scorer, sample)
    finally:
        teacher.close()
    return {
        "unit": "teacher tokens",
        "per_trace": sum(r.tokens for r in res) / len(sample),
        "ms_per_trace": 1000 * secs / len(sample),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prm", type=Path, default=ROOT / "data" / "prm")
    ap.add_argument("--train-run", type=Path, default=ROOT / "runs" / "prm-labels", help="the run the PRM learnt from")
    ap.add_argument("--eval-run", type=Path, default=ROOT / "runs" / "prm-eval")
    ap.add_argument("--eval-problems", type=Path, default=ROOT / "runs" / "prm-eval-src" / "problems.jsonl")
    ap.add_argument(
        "--filter-run",
        type=Path,
        default=ROOT / "runs" / "student-data",
        help="a larger run for the filter's precision and recall (`make student-data`: 3,000 fresh problems)",
    )
    ap.add_argument("--filter-problems", type=Path, default=ROOT / "runs" / "student-src" / "problems.jsonl")
    ap.add_argument("--cost-sample", type=int, default=300, help="distinct correct traces timed for the cost")
    ap.add_argument("--exact-prm", type=Path, default=None, help="keep the exact-label PRM here (reused if there)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "prm_quality.json")
    args = ap.parse_args()
    info = json.loads((args.prm / "training.json").read_text())
    seen = set(pl.read_parquet(args.train_run / "problems")["question"])
    evals = labelled_traces(args.eval_run, args.eval_problems, seen)
    large = []
    if (args.filter_run / "rollouts").exists() and args.filter_problems.is_file():
        large = [t for t in labelled_traces(args.filter_run, args.filter_problems, seen) if t["correct"]]
    sample = distinct_items([t for t in evals if t["correct"]])
    sample = sample[:: max(1, len(sample) // args.cost_sample)][: args.cost_sample]
    print(
        f"evaluation: {len({t['problem_id'] for t in evals})} problems, {len(evals)} traces "
        f"({sum(t['correct'] for t in evals)} with the right answer, "
        f"{sum(t['correct'] and t['truth'] is not None for t in evals)} of them with a wrong step); "
        f"cost timed on {len(sample)} distinct correct-answer traces",
        flush=True,
    )
    rows, larger = {}, {}

    def add(name: str, results: list[StepScores], cost: dict) -> None:
        rows[name] = metrics(evals, results[: len(evals)]) | cost
        larger[name] = filter_metrics(large, results[len(evals) :])

    mc = [StepScores(t["step_scores"], t["first_bad_step"]) for t in evals + large]
    add("Monte-Carlo (scan, hard, n=8)", mc, mc_cost(args.eval_run, sample))
    add("PRM trained on Monte-Carlo labels", *prm_scores(args.prm, evals + large, sample))
    bf16 = prm_scores(args.prm, [], sample, dtype="bfloat16")[1]  # its timing only
    with tempfile.TemporaryDirectory() as tmp:
        exact_dir = args.exact_prm or Path(tmp) / "exact"
        refs = labelled_traces(args.train_run, ROOT / "data" / "demo" / "problems.jsonl")
        weight: dict = {}
        for t in refs:
            key = (t["problem_id"], tuple(t["steps"]))
            weight[key] = weight.get(key, 0) + 1
        first = {(t["problem_id"], tuple(t["steps"])): t for t in refs}
        exact = [
            Example(
                pid,
                pid,
                t["question"],
                steps,
                tuple(float(x == 1) for x in exact_labels(t["steps"], t["truth"])),
                weight[(pid, steps)],
                t["correct"],  # the threshold is calibrated on the correct-answer traces
            )
            for (pid, steps), t in first.items()
        ]
        keep = dict(epochs=info["epochs"], batch=info["batch"], lr=info["lr"], seed=info["seed"], holdout=0.0)
        keep["layers"] = info.get("layers")  # the same depth as the PRM it bounds
        made = json.loads((exact_dir / "training.json").read_text()) if (exact_dir / "training.json").is_file() else {}
        if made.get("data_sha256") != data_hash(exact) or any(made.get(k) != v for k, v in keep.items()):
            # a kept --exact-prm is reused only when it was trained on these examples with these settings
            t0 = time.time()
            train(exact, exact_dir, ROOT / info["init"], **keep)  # ROOT / an absolute path is that path
            print(f"exact-label PRM: {len(exact)} distinct traces, trained in {time.time() - t0:.0f} s", flush=True)
        add("PRM trained on exact labels (upper bound)", *prm_scores(exact_dir, evals + large, sample))

    def f(x, fmt="{:.2f}"):
        return "–" if x is None else fmt.format(x)

    print("\n| scorer | step AUROC | first-error F1 | flagged | precision | recall | cost per trace | ms per trace |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in rows.items():
        print(
            f"| {name} | {f(m['step_auroc'])} | {f(m['first_error_f1'])} | {m['flagged']} | {f(m['precision'])} | "
            f"{f(m['recall'])} | {m['per_trace']:,.0f} {m['unit']} | {m['ms_per_trace']:.1f} |"
        )
    mc_ms = rows["Monte-Carlo (scan, hard, n=8)"]["ms_per_trace"]
    fp32_ms = rows["PRM trained on Monte-Carlo labels"]["ms_per_trace"]
    print(
        f"\nPRM wall-clock per trace against Monte-Carlo's: float32 (the scorer's default on CPU) "
        f"{mc_ms / fp32_ms:.1f}x less; bfloat16 {bf16['ms_per_trace']:.1f} ms, {mc_ms / bf16['ms_per_trace']:.1f}x less"
    )
    if large:
        print(
            f"\nThe filter on {args.filter_run.name}'s {len(large):,} correct-answer traces of "
            f"{len({t['problem_id'] for t in large}):,} fresh problems the teacher solved "
            f"({sum(t['truth'] is not None for t in large)} with a wrong step; Monte-Carlo scores as that run "
            "made them):\n"
        )
        print("| scorer | flagged | precision (95% CI) | recall |\n|---|---|---|---|")
        for name, m in larger.items():
            ci = m["precision_ci"]
            print(
                f"| {name} | {m['flagged']} | {f(m['precision'])} ({f(ci and ci[0])}–{f(ci and ci[1])}) | "
                f"{f(m['recall'])} |"
            )
    rows = {name: m | {"larger_run": larger[name]} for name, m in rows.items()} | {"bf16_cost": bf16}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
