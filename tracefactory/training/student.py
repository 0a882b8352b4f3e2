"""Proof on a student: fine-tune a small model on each kind of training set a run can give, at an equal
budget of training tokens, and measure it on held-out problems (`bench/student.py` drives it).

Arms, built from one run directory (`rollouts`, `problems`, `dataset`):

- a: every rollout of the original problems, right or wrong;
- b: every correct-answer rollout of the original problems;
- c: one random correct-answer rollout per solved original problem;
- d: the run's `dataset` (shortest correct, step-filtered) of the original problems, in curriculum order;
- e: the rows of (d), shuffled (isolates the curriculum);
- f: the whole `dataset`, rewritten variants included, in curriculum order.

Every arm is cut to the same number of target tokens — the smallest arm's — by a seeded random subset (kept
in the arm's order), and every student trains the same number of steps on batches of the same number of
target tokens, from one shared checkpoint that has seen only arithmetic drills (one equation, asked bare;
never a word problem). Students are evaluated greedily under one vLLM engine whose weights are reloaded in
place for each student, on generator problems from a seed no training data came from.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import polars as pl

from tracefactory.errors import ConfigError
from tracefactory.store.io import RunDir
from tracefactory.store.schema import (
    CORRECT,
    CURRICULUM_RANK,
    LEVEL,
    PROBLEM_ID,
    QUESTION,
    REWRITE_OF,
    SAMPLE_INDEX,
    TEXT,
)
from tracefactory.training.synth import Problem

log = logging.getLogger(__name__)

ARMS: dict[str, str] = {
    "a": "all rollouts, right or wrong",
    "b": "every correct trace",
    "c": "one random correct trace per problem",
    "d": "tracefactory dataset, curriculum order",
    "e": "tracefactory dataset, shuffled",
    "f": "dataset + rewritten variants, curriculum order",
}
CURRICULUM_ARMS = {"d", "f"}  # the others are shuffled by the seed


@dataclass(frozen=True)
class Row:
    problem_id: str
    question: str
    target: str  # the chain of thought the student learns to write
    level: str | None
    tokens: int = 0  # target tokens, EOS included


def pools(run: str | Path, seed: int) -> dict[str, list[Row]]:
    """Each arm's candidate rows from a finished run, in the arm's order (see the module docstring)."""
    run = RunDir(run)
    missing = [t for t in ("rollouts", "problems", "dataset") if t not in run.tables()]
    if missing:
        raise ConfigError("RUN_DIR", str(run.root), f"a finished run directory (missing: {', '.join(missing)})")
    problems = run.read_table("problems")
    originals = problems.filter(pl.col(REWRITE_OF).is_null())
    meta = {pid: (q, lv) for pid, q, lv in problems.select(PROBLEM_ID, QUESTION, LEVEL).iter_rows()}

    def rows(frame: pl.DataFrame, text: str) -> list[Row]:
        return [Row(pid, meta[pid][0], t, meta[pid][1]) for pid, t in frame.select(PROBLEM_ID, text).iter_rows()]

    rollouts = (
        run.read_table("rollouts")
        .filter(pl.col(PROBLEM_ID).is_in(originals[PROBLEM_ID].implode()) & (pl.col(TEXT).str.len_chars() > 0))
        .sort(PROBLEM_ID, SAMPLE_INDEX)
    )
    correct = rollouts.filter(pl.col(CORRECT))
    # a kept trace's target is its completion as generated: the `cot` column has the template's `<think>\n` in
    # front, which the student's prompt (the teacher's template) already ends with
    completions = run.read_table("rollouts").select(PROBLEM_ID, SAMPLE_INDEX, TEXT)
    dataset = (
        run.read_table("dataset").sort(CURRICULUM_RANK).join(completions, on=[PROBLEM_ID, SAMPLE_INDEX], how="left")
    )
    rng = random.Random(seed)
    one = [rng.choice(group) for _, group in _groups(rows(correct, TEXT))]
    d = rows(dataset.filter(pl.col(REWRITE_OF).is_null()), TEXT)
    out = {
        "a": rows(rollouts, TEXT),
        "b": rows(correct, TEXT),
        "c": one,
        "d": d,
        "e": list(d),
        "f": rows(dataset, TEXT),
    }
    for arm, pool in out.items():
        if arm not in CURRICULUM_ARMS:
            random.Random(f"{seed}:{arm}").shuffle(pool)
    return out


def _groups(rows: list[Row]):
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.problem_id, []).append(r)
    return sorted(by.items())


def with_tokens(rows: Sequence[Row], count: Callable[[str], int]) -> list[Row]:
    return [Row(r.problem_id, r.question, r.target, r.level, count(r.target)) for r in rows]


def cut_to_budget(pool: Sequence[Row], budget: int, seed: int, arm: str) -> list[Row]:
    """A seeded random subset of `pool` with at most `budget` target tokens (filled greedily, so it falls
    short by less than one row), in `pool`'s order."""
    if sum(r.tokens for r in pool) <= budget:
        return list(pool)
    order = list(range(len(pool)))
    random.Random(f"{seed}:{arm}:budget").shuffle(order)
    chosen, used = set(), 0
    for i in order:
        if used + pool[i].tokens <= budget:
            chosen.add(i)
            used += pool[i].tokens
    return [r for i, r in enumerate(pool) if i in chosen]


def training_sets(
    run: str | Path, arms: Sequence[str], seeds: Sequence[int], count: Callable[[str], int], budget: int | None = None
) -> tuple[dict[int, dict[str, list[Row]]], int]:
    """Each seed's training sets of `arms` at one budget of target tokens: `budget`, or the smallest arm's total
    under any seed, whichever is smaller. Answers ({seed: {arm: rows}}, the budget)."""
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ConfigError("--arms", ",".join(unknown), f"arms among {', '.join(ARMS)}")
    candidates = {}
    for seed in seeds:
        every = pools(run, seed)
        candidates[seed] = {arm: with_tokens(every[arm], count) for arm in arms}
        empty = [arm for arm, rows in candidates[seed].items() if not rows]
        if empty:
            raise ConfigError("RUN_DIR", str(run), f"a run with rows for every arm (none for: {', '.join(empty)})")
    smallest = min(sum(r.tokens for r in rows) for by_arm in candidates.values() for rows in by_arm.values())
    budget = min(budget or smallest, smallest)
    sets = {
        seed: {arm: cut_to_budget(rows, budget, seed, arm) for arm, rows in by_arm.items()}
        for seed, by_arm in candidates.items()
    }
    return sets, budget


# ---- training --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 150
    batch_tokens: int = 1024  # target tokens per optimizer step
    lr: float = 5e-4
    warmup: int = 10


def base_checkpoint(out: Path, steps: int, seed: int) -> Path:
    """The shared starting point: the teacher's architecture trained on arithmetic drills only (never a word
    problem). Reused when `out` already holds one made with the same settings."""
    from tracefactory.training import teacher as teacher_training

    info = out / "training.json"
    if info.exists():
        made = json.loads(info.read_text())
        if made.get("steps") == steps and made.get("seed") == seed and made.get("drill_share") == 1.0:
            return out
    log.info("training the student's base checkpoint: %d steps of arithmetic drills (once; reused after)", steps)
    if out.exists():
        shutil.rmtree(out)
    teacher_training.train(out, steps=steps, batch=32, lr=1e-3, seed=seed, drill_share=1.0)
    return out


def finetune(
    base: Path,
    rows: Sequence[Row],
    out: Path,
    settings: TrainSettings,
    seed: int,
    tick: Callable | None = None,
    device: str = "cpu",
) -> dict:
    """Fine-tune the base on `rows`, in their order (epoch after epoch), loss on the targets only, on a torch
    `device` ("cpu", "cuda"). A student already in `out` from the same base, rows, settings and seed is reused
    (an interrupted bench resumes; where it was trained is not part of that)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from tracefactory.training.teacher import _example, lr_at, optimizer_step, pad_batch

    key = _student_key(base, rows, settings, seed)
    made = out / "student.json"
    record = trained_before(out, key)
    if record is not None:
        if tick:
            for _ in range(settings.steps):
                tick()
        return record
    made.unlink(missing_ok=True)  # written again only once the new weights are saved
    torch.manual_seed(seed)
    tok = PreTrainedTokenizerFast.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.01)
    encoded = [_example(tok, r.question, r.target) for r in rows]
    cursor, seen_tokens, losses = 0, 0, []
    for step in range(settings.steps):
        batch, tokens = [], 0
        while tokens < settings.batch_tokens:
            x, y = encoded[cursor % len(encoded)]
            batch.append((x, y))
            tokens += sum(1 for t in y if t != -100)
            cursor += 1
        seen_tokens += tokens
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings.steps, settings.lr, settings.warmup)
        losses.append(optimizer_step(model, opt, *pad_batch(batch, tok.pad_token_id)))
        if tick:
            tick()
    out.mkdir(parents=True, exist_ok=True)
    model.to("cpu", torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    trained = {
        "rows": len(rows),
        "target_tokens": sum(r.tokens for r in rows),
        "tokens_trained": seen_tokens,
        "epochs": round(cursor / len(encoded), 2),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
    }
    made.write_text(json.dumps({"key": key, "trained": trained}, indent=2))
    return trained


def trained_before(out: Path, key: str) -> dict | None:
    """The `trained` record of the student in `out` when it was trained under `key` (`_student_key`: the same base,
    rows, settings and seed) and its weights are there, else None."""
    made = out / "student.json"
    if not (made.exists() and (out / "model.safetensors").exists()):
        return None
    info = json.loads(made.read_text())
    return info["trained"] if info.get("key") == key else None


def finetune_all(
    base: Path,
    students: Sequence[tuple[Sequence[Row], Path, int]],
    settings: TrainSettings,
    jobs: int = 1,
    tick: Callable | None = None,
    device: str = "cpu",
) -> list[dict]:
    """`finetune` each (rows, out, seed) of `students`, answering their `trained` records in order; those trained
    before are reused. With jobs > 1 the others train `jobs` at a time, each in a fresh process (a worker's memory
    grows through a student's training — ~7 GB after 1,000 steps here — and is given back when it ends) on
    cores // jobs threads, the last ones on the cores the others leave (a 3M-parameter model keeps two threads
    busy only part of a step; two students side by side use them better); `tick` is called `settings.steps`
    times as each student ends. A killed bench loses the students in training only."""
    if jobs <= 1:
        return [finetune(base, rows, out, settings, seed, tick, device) for rows, out, seed in students]
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done = [trained_before(out, _student_key(base, rows, settings, seed)) for rows, out, seed in students]
    todo = [i for i, record in enumerate(done) if record is None]
    for _ in range(settings.steps * (len(students) - len(todo)) if tick else 0):
        tick()
    cores, tail = os.cpu_count() or 1, len(todo) % jobs
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures = {}
        for n, i in enumerate(todo):
            threads = max(1, cores // (tail if n >= len(todo) - tail else jobs))
            rows, out, seed = students[i]
            futures[pool.submit(_finetune_on, threads, base, rows, out, settings, seed, None, device)] = i
        for future in as_completed(futures):
            done[futures[future]] = future.result()
            if tick:
                for _ in range(settings.steps):
                    tick()
    return done


def _finetune_on(threads: int, *args) -> dict:
    """`finetune` on `threads` torch threads (in a worker process of its own)."""
    import torch

    torch.set_num_threads(threads)
    return finetune(*args)


def _student_key(base: Path, rows: Sequence[Row], settings: TrainSettings, seed: int) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update((base / "model.safetensors").read_bytes())
    h.update(json.dumps([asdict(settings), seed, [(r.question, r.target) for r in rows]]).encode())
    return h.hexdigest()


# ---- evaluation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    problem_id: str
    level: int
    correct: bool
    tokens: int


def _reload(worker, path: str) -> None:
    """Runs in vLLM's worker process: reload the weights in place, then tie the output head to the new
    embeddings again. vLLM 0.32's in-place reload puts the old head back when the checkpoint has none (tied
    embeddings: transformers saves no lm_head.weight), and on CPU the head computes through a weight packed
    when it was processed: both are redone here, or the new trunk would read out through the old head."""
    worker.reload_weights(weights_path=path)
    model = worker.model_runner.get_model()
    if getattr(model.config, "tie_word_embeddings", False):
        head = model.lm_head
        head.weight.data.copy_(model.model.embed_tokens.weight.data)
        head.quant_method.process_weights_after_loading(head)


class Evaluator:
    """One vLLM engine for every student: same architecture, weights reloaded in place between students
    (an engine start costs ~40 s on 2 cores; a reload well under a second), prefix cache cleared after each.
    The reload is a function sent to vLLM's worker, which vLLM only accepts with
    VLLM_ALLOW_INSECURE_SERIALIZATION=1 (pickle between this process and the engine's own; set here)."""

    def __init__(self, architecture: Path, max_tokens: int = 200):
        import os

        from tracefactory.backends.vllm_teacher import VLLMTeacher
        from tracefactory.config import SamplingConfig, TeacherConfig

        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        cfg = TeacherConfig(model=str(architecture), max_model_len=512, enforce_eager=True)
        self.teacher = VLLMTeacher(cfg, progress=False)
        self.params = SamplingConfig(n=1, temperature=0.0, max_tokens=max_tokens)
        self.loaded: Path | None = architecture

    def load(self, weights: Path) -> None:
        llm = self.teacher.llm
        if self.loaded != weights:
            llm.collective_rpc(_reload, args=(str(weights),))
            llm.reset_prefix_cache()
            self.loaded = weights

    def score(self, weights: Path, problems: Sequence[Problem]) -> list[Scored]:
        from tracefactory.grading.think import ThinkSpec

        self.load(weights)
        prompts = [[{"role": "user", "content": p.question}] for p in problems]
        results = self.teacher.generate(prompts, 1, self.params)
        think = think_of(self.teacher) if prompts else ThinkSpec()
        out = []
        for p, res in zip(problems, results, strict=True):
            c = res.completions[0] if res.completions else None
            out.append(Scored(p.id, p.level, c is not None and solves(c.text, p, think), c.tokens if c else 0))
        return out

    def arithmetic(self, weights: Path, drills: Sequence[tuple[str, str]]) -> float:
        """Share of bare equations (`9 + 8`) whose answer's first line is the whole equation (`9 + 8 = 17`):
        whether a model still computes, apart from reading word problems."""
        self.load(weights)
        results = self.teacher.generate([[{"role": "user", "content": q}] for q, _ in drills], 1, self.params)
        first = [(r.completions[0].text.strip().splitlines() or [""])[0] if r.completions else "" for r in results]
        return sum(got == line for got, (_, line) in zip(first, drills, strict=True)) / len(drills)

    def close(self) -> None:
        self.teacher.close()


def think_of(teacher):
    """How a model's completions are read: its chat template, rendered for a question, may open a think block."""
    from tracefactory.grading.think import ThinkSpec, opener_of

    return ThinkSpec("auto", opener_of(teacher.render([{"role": "user", "content": "?"}])))


def solves(text: str, problem: Problem, think) -> bool:
    """Whether a completion reaches a generator problem's integer gold, its answer read as the factory reads it
    (from the response, after `</think>`; none from a broken think block)."""
    from tracefactory.grading.answers import clean
    from tracefactory.grading.verify import answer_of

    pred = answer_of(text, None, think)
    return pred is not None and clean(pred) == problem.answer


def drill_problems(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` equation lines of level-1/2 generator problems, asked bare: (`9 + 8`, `9 + 8 = 17`)."""
    from tracefactory.training.teacher import drill

    rng = random.Random(seed)
    return [drill(rng, max_level=2) for _ in range(n)]


def held_out_problems(n_per_level: int, seed: int, exclude: set[str]) -> tuple[list[Problem], int]:
    """Generator problems from `seed`, minus any whose question a training run also holds (templated level-1
    questions can coincide); answers (problems, how many were removed)."""
    from tracefactory.training.synth import generate

    problems = generate(n_per_level, seed)
    kept = [p for p in problems if p.question not in exclude]
    return kept, len(problems) - len(kept)


def run_questions(run: str | Path) -> set[str]:
    return set(RunDir(run).read_table("problems")[QUESTION].to_list())


# ---- statistics ------------------------------------------------------------------------------------------


def bootstrap_interval(per_seed: Sequence[Sequence[bool]], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean accuracy over seeds and problems: seeds and problems both resampled (the
    problems paired across seeds), so it holds the spread between training seeds and the evaluation sample's."""
    import numpy as np

    m = np.asarray(per_seed, dtype=float)  # seeds x problems
    rng = np.random.default_rng(seed)
    s, n = m.shape
    means = [m[rng.integers(0, s, s)][:, rng.integers(0, n, n)].mean() for _ in range(draws)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(x: Sequence[Sequence[bool]], y: Sequence[Sequence[bool]], draws: int = 2000, seed: int = 0):
    """Mean accuracy of x minus y and its 95% bootstrap interval, the same seeds and problems drawn for both."""
    import numpy as np

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    s, n = a.shape
    diffs = []
    for _ in range(draws):
        si, pi = rng.integers(0, s, s), rng.integers(0, n, n)
        diffs.append(a[si][:, pi].mean() - b[si][:, pi].mean())
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def summary(arm: str, scored: Sequence[Sequence[Scored]], trained: Sequence[dict]) -> dict:
    """One table row: accuracy by level and overall (mean over seeds) with its interval, answer length."""
    levels = sorted({s.level for s in scored[0]})
    correct = [[s.correct for s in run] for run in scored]
    lo, hi = bootstrap_interval(correct)
    n = len(scored) * len(scored[0])
    return {
        "arm": arm,
        "what": ARMS.get(arm, arm),
        "seeds": len(scored),
        "trained": list(trained),  # per seed: rows, target tokens, tokens trained, epochs, final loss
        "accuracy_by_level": {
            str(lv): sum(s.correct for run in scored for s in run if s.level == lv)
            / sum(1 for run in scored for s in run if s.level == lv)
            for lv in levels
        },
        "accuracy": sum(sum(c) for c in correct) / n,
        "accuracy_per_seed": [sum(c) / len(c) for c in correct],
        "ci95": [lo, hi],
        "mean_answer_tokens": sum(s.tokens for run in scored for s in run) / n,
        # per seed, per held-out problem in order (compact: one string per seed)
        "correct": ["".join("1" if s.correct else "0" for s in run) for run in scored],
        "answer_tokens": [" ".join(str(s.tokens) for s in run) for run in scored],
    }


def as_json(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
