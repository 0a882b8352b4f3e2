"""Step scorers: Monte-Carlo estimation with the teacher (Math-Shepherd, with OmegaPRM's binary search).

The value of step i of a trace is the share of N teacher continuations of the prefix (steps 0..i)
whose final answer equals the gold. A step whose prefix can no longer reach the gold (value 0) is
"bad"; assuming that once a trace goes wrong it stays wrong, the first bad step is found by binary
search in about log2(steps) probes instead of one probe per step (`search="binary"`). `search="scan"`
probes prefixes front to back and stops at the first bad one: it needs no monotonicity, so its first
bad step is exactly that of scoring every prefix (`search="all"`), and with hard labels (good
prefixes settled by one success) it is the cheaper search when traces go wrong early. Completions
already sampled at rollout time that share a prefix with the trace are counted as free
continuations of that prefix.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import polars as pl

from tracefactory.backends.base import Teacher
from tracefactory.backends.prompts import build_prompt
from tracefactory.config import PromptConfig, SamplingConfig
from tracefactory.grading.steps import join_steps, split_steps
from tracefactory.store.schema import CORRECT, PROBLEM_ID, REASONING, TEXT, ScoreKey, StepScores

# by problem: every graded completion as (its steps, correct) — free continuations of shared prefixes
ReusePool = dict[str, list[tuple[tuple[str, ...], bool]]]


@dataclass(frozen=True)
class StepItem:
    problem_id: str
    question: str
    gold: str
    steps: tuple[str, ...]
    seed: int = 0
    reached_gold: bool = True  # False for a wrong-answer trace (scored with step_score.scope: all)
    head: str = ""  # what precedes the steps in the assistant turn: the think block's opening (`<think>\n`)


class StepScorer(Protocol):
    name: str

    def score(self, items: Sequence[StepItem]) -> list[StepScores]: ...

    def close(self) -> None:
        """Release the scorer's own engine, if it has one (never the teacher it was given)."""
        ...


def step_text(rollouts: pl.DataFrame) -> pl.Expr:
    """What a trace's steps are split from: its reasoning when it has a think block, else the whole completion."""
    return pl.coalesce(REASONING, TEXT) if REASONING in rollouts.columns else pl.col(TEXT)


def reuse_pool(rollouts: pl.DataFrame, split: str, pattern: str | None) -> ReusePool:
    """Every graded completion of `rollouts` as (steps, correct), by problem."""
    pool: ReusePool = {}
    for pid, text, ok in rollouts.select(PROBLEM_ID, step_text(rollouts).alias(TEXT), CORRECT).iter_rows():
        pool.setdefault(pid, []).append((tuple(split_steps(text, split, pattern)), bool(ok)))
    return pool


# (gold, completion text) -> correct? ; injected so this module needs no grading machinery
Judge = Callable[[list[tuple[str, str]]], list[bool]]
# (items) -> per item: the share of continuations of its steps reaching the gold (None: could not ask), their tokens
Verifier = Callable[[Sequence[StepItem]], list[tuple[float | None, int]]]


@dataclass
class _Search:
    item: StepItem
    lo: int
    hi: int  # the first bad step is in [lo, hi]; hi == last step means "none before the last"
    values: dict[int, float] = field(default_factory=dict)
    probes: int = 0
    tokens: int = 0
    note: str | None = None  # set when the trace cannot be scored

    def next_probe(self, search: str) -> int | None:
        if self.note:
            return None
        if search == "binary":
            return (self.lo + self.hi) // 2 if self.lo < self.hi else None
        if search == "scan" and any(v == 0 for v in self.values.values()):
            return None  # scan: forward, stopping at the first bad step
        todo = [i for i in range(len(self.item.steps) - 1) if i not in self.values]
        return todo[0] if todo else None

    def record(self, i: int, value: float) -> None:
        self.values[i] = value
        if value > 0:
            self.lo = max(self.lo, i + 1)
        else:
            self.hi = min(self.hi, i)

    def result(self) -> StepScores:
        if self.note:
            return StepScores([], None, self.probes, self.tokens, note=self.note)
        last = len(self.item.steps) - 1
        bad = min((i for i, v in self.values.items() if v == 0), default=None)
        if bad is None and not self.item.reached_gold:
            bad = last  # the full trace is a continuation that missed the gold, whatever its prefixes scored
        scores = []
        for i in range(last + 1):
            if bad is not None and i >= bad:
                scores.append(0.0)
            else:  # probed steps keep their estimate; steps inferred good (before a good probe) get 1
                scores.append(self.values.get(i, 1.0))
        return StepScores(scores, bad, self.probes, self.tokens)


@dataclass
class _Probe:
    """One step prefix being estimated: reused rollout completions plus fresh teacher samples."""

    search: _Search
    step: int
    reused: int
    reused_ok: int
    drawn: int = 0
    wins: int = 0
    skipped: str | None = None  # why the teacher gave no samples: "too_long", or "teacher_error"

    def remaining(self, n: int, hard: bool) -> int:
        if self.skipped or (hard and self.reused_ok + self.wins):  # a hard label is settled by one success
            return 0
        return max(0, n - self.reused - self.drawn)

    def value(self, hard: bool) -> float:
        ok = self.reused_ok + self.wins
        if hard:
            return float(ok > 0)
        return ok / max(1, self.reused + self.drawn)


class MonteCarloScorer:
    """`label="soft"`: a step's value is the share of `n` continuations reaching the gold.
    `label="hard"`: 1 if any continuation does, else 0 — sampled adaptively (1, 1, 2, 4, … at a time, up
    to `n`), stopping at the first success. Sample j of a prefix always has seed `base + j` (vLLM gives
    sample j of an n-sample request seed + j), so adaptive sampling draws exactly the first samples the
    fixed-`n` estimate would draw and the hard labels are the same, at a fraction of the tokens."""

    name = "monte-carlo"

    def __init__(
        self,
        teacher: Teacher,
        judge: Judge,
        prompt: PromptConfig,
        sampling: SamplingConfig,
        search: Literal["binary", "scan", "all"] = "binary",
        reuse: ReusePool | None = None,
        label: Literal["soft", "hard"] = "soft",
    ):
        self.teacher = teacher
        self.judge = judge
        self.prompt = prompt
        self.sampling = sampling
        self.search = search
        self.reuse = reuse or {}
        self.hard = label == "hard"

    def close(self) -> None:
        """Nothing of its own to release: the teacher belongs to the caller."""

    @staticmethod
    def _prefix(item: StepItem, i: int) -> str:
        """The assistant turn up to step i (the think block's opening first): continued by the teacher, and the
        front of every continuation's text when it is judged."""
        return item.head + join_steps(list(item.steps[: i + 1]))

    def _prefix_prompt(self, item: StepItem, i: int):
        prefix = self._prefix(item, i)
        base = build_prompt(item.question, self.prompt)
        if isinstance(base, str):
            return base + prefix
        return base + [{"role": "assistant", "content": prefix}]

    def _reused(self, item: StepItem, i: int) -> tuple[int, int]:
        """(samples, successes) among rollout completions that continue this prefix."""
        head = item.steps[: i + 1]
        hits = [
            ok for steps, ok in self.reuse.get(item.problem_id, []) if steps[: i + 1] == head and steps != item.steps
        ]
        return len(hits), sum(hits)

    def score(self, items: Sequence[StepItem]) -> list[StepScores]:
        searches = [_Search(it, 0, max(0, len(it.steps) - 1)) for it in items]
        while True:
            probes = [(s, s.next_probe(self.search)) for s in searches]
            probes = [(s, i) for s, i in probes if i is not None]
            if not probes:
                return [s.result() for s in searches]
            self._estimate(probes)

    def reaches(self, items: Sequence[StepItem]) -> list[tuple[float | None, int]]:
        """For each item, the value of its steps but the last — the share of the teacher's continuations of them
        (under the prompt without anything the steps came from, e.g. a hint) that reach the gold, estimated as any
        step's is — and the teacher tokens that took; None when the teacher could not be asked (the prefix longer
        than its context, a request that failed for good)."""
        searches = [_Search(it, 0, max(0, len(it.steps) - 1)) for it in items]
        self._estimate([(s, len(s.item.steps) - 2) for s in searches])
        return [(None if s.note else s.values[len(s.item.steps) - 2], s.tokens) for s in searches]

    def _estimate(self, probes: list[tuple[_Search, int]]) -> None:
        """Estimate one prefix per search; each sampling round is one teacher call per distinct sample
        count and one grading batch."""
        state = [_Probe(s, i, *self._reused(s.item, i)) for s, i in probes]
        while True:
            todo = [(p, p.remaining(self.sampling.n, self.hard)) for p in state]
            # hard labels: double the samples drawn so far each round (1, 1, 2, 4, ...)
            todo = [(p, min(m, max(1, p.drawn)) if self.hard else m) for p, m in todo if m]
            if not todo:
                break
            self._sample(todo)
        for p in state:
            p.search.probes += 1
            if p.skipped and not p.reused:
                p.search.note = p.skipped
            else:
                p.search.record(p.step, p.value(self.hard))

    def _sample(self, todo: list[tuple[_Probe, int]]) -> None:
        texts: dict[int, list[str]] = {}
        for m in sorted({m for _, m in todo}):
            group = [(j, p) for j, (p, mm) in enumerate(todo) if mm == m]
            prompts = [self._prefix_prompt(p.search.item, p.step) for _, p in group]
            seeds = [p.search.item.seed + 7919 * (p.step + 1) + p.drawn for _, p in group]
            for (j, p), result in zip(group, self.teacher.generate(prompts, m, self.sampling, seeds), strict=True):
                completions = result.completions
                if not completions:  # the teacher could not take the prefix prompt, or failed for good
                    p.skipped = "too_long" if result.ok else "teacher_error"
                    continue
                prefix = self._prefix(p.search.item, p.step)
                texts[j] = [prefix + c.text for c in completions]
                p.search.tokens += sum(c.tokens for c in completions)
        pairs = [(j, (p.search.item.gold, t)) for j, (p, _) in enumerate(todo) for t in texts.get(j, [])]
        verdicts = self.judge([pair for _, pair in pairs]) if pairs else []
        for j, (p, _) in enumerate(todo):
            p.drawn += len(texts.get(j, []))
        for (j, _), ok in zip(pairs, verdicts, strict=True):
            todo[j][0].wins += bool(ok)


def score_key(it: StepItem) -> ScoreKey:
    """A trace's scores depend on its problem's text and gold, not only its id (an edited question)."""
    return it.problem_id, hashlib.sha256(f"{it.question}\x00{it.gold}".encode()).hexdigest()[:16], it.steps


class CachedScorer:
    """Serves scores already computed for the same (problem, steps); scores only the rest, `block`
    traces at a time, calling `on_block()` after each (to persist the cache: a crash mid-stage loses
    at most one block of scoring)."""

    def __init__(
        self,
        inner: StepScorer,
        cache: dict[ScoreKey, StepScores],
        block: int = 512,
        on_block: Callable[[], None] | None = None,
    ):
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.block = block
        self.on_block = on_block

    def close(self) -> None:
        self.inner.close()

    def score(self, items: Sequence[StepItem]) -> list[StepScores]:
        keys = [score_key(it) for it in items]
        missing = list({k: it for k, it in zip(keys, items, strict=True) if k not in self.cache}.items())
        for start in range(0, len(missing), self.block):
            chunk = missing[start : start + self.block]
            for (k, _), res in zip(chunk, self.inner.score([it for _, it in chunk]), strict=True):
                self.cache[k] = dataclasses.replace(res, cost=res.tokens)
            if self.on_block:
                self.on_block()
        # scores computed by an earlier run cost this one nothing (`tokens` 0) but keep their `cost`; a trace scored
        # twice in one call (the same steps of the same problem) costs once, at its first row
        fresh, seen, out = {k for k, _ in missing}, set(), []
        for k in keys:
            res = self.cache[k]
            if k in seen:
                out.append(StepScores(res.scores, res.first_bad_step, note=res.note))
            else:
                out.append(
                    res if k in fresh else StepScores(res.scores, res.first_bad_step, note=res.note, cost=res.cost)
                )
            seen.add(k)
        return out
