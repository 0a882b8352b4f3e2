"""Step scorers: Monte-Carlo estimation with the teacher (Math-Shepherd, with OmegaPRM's binary search).

The value of step i of a trace is the share of N teacher continuations of the prefix (steps 0..i)
whose final answer equals the gold. A step whose prefix can no longer reach the gold (value 0) is
"bad"; assuming that once a trace goes wrong it stays wrong, the first bad step is found by binary
search in about log2(steps) probes instead of one probe per step. Completions already sampled at
rollout time that share a prefix with the trace are counted as free continuations of that prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

from tracefactory.backends.base import Teacher
from tracefactory.config import PromptConfig, SamplingConfig
from tracefactory.prompts import build_prompt
from tracefactory.steps import join_steps


@dataclass(frozen=True)
class StepItem:
    problem_id: str
    question: str
    gold: str
    steps: tuple[str, ...]
    seed: int = 0


@dataclass
class StepScores:
    scores: list[float]
    first_bad_step: int | None
    probes: int = 0  # prefixes estimated
    tokens: int = 0  # teacher tokens spent on continuations
    note: str | None = None  # why a trace was not scored (then `scores` is empty)


class StepScorer(Protocol):
    name: str

    def score(self, items: Sequence[StepItem]) -> list[StepScores]: ...


# (gold, completion text) -> correct? ; injected so this module needs no grading machinery
Judge = Callable[[list[tuple[str, str]]], list[bool]]


@dataclass
class _Search:
    item: StepItem
    lo: int
    hi: int  # the first bad step is in [lo, hi]; hi == last step means "none before the last"
    values: dict[int, float] = field(default_factory=dict)
    probes: int = 0
    tokens: int = 0
    note: str | None = None  # set when the trace cannot be scored

    def next_probe(self, exhaustive: bool) -> int | None:
        if self.note:
            return None
        if exhaustive:
            todo = [i for i in range(len(self.item.steps) - 1) if i not in self.values]
            return todo[0] if todo else None
        return (self.lo + self.hi) // 2 if self.lo < self.hi else None

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
        scores = []
        for i in range(last + 1):
            if bad is not None and i >= bad:
                scores.append(0.0)
            else:  # probed steps keep their estimate; steps inferred good (before a good probe) get 1
                scores.append(self.values.get(i, 1.0))
        return StepScores(scores, bad, self.probes, self.tokens)


class MonteCarloScorer:
    name = "monte-carlo"

    def __init__(self, teacher: Teacher, judge: Judge, prompt: PromptConfig, sampling: SamplingConfig,
                 search: Literal["binary", "all"] = "binary",
                 reuse: dict[str, list[tuple[tuple[str, ...], bool]]] | None = None):
        self.teacher, self.judge, self.prompt, self.sampling = teacher, judge, prompt, sampling
        self.search, self.reuse = search, reuse or {}

    def _prefix_prompt(self, item: StepItem, i: int):
        prefix = join_steps(list(item.steps[: i + 1]))
        base = build_prompt(item.question, self.prompt)
        if isinstance(base, str):
            return base + prefix
        return base + [{"role": "assistant", "content": prefix}]

    def _reused(self, item: StepItem, i: int) -> tuple[int, int]:
        """(samples, successes) among rollout completions that continue this prefix."""
        head = item.steps[: i + 1]
        hits = [ok for steps, ok in self.reuse.get(item.problem_id, []) if steps[: i + 1] == head
                and steps != item.steps]
        return len(hits), sum(hits)

    def score(self, items: Sequence[StepItem]) -> list[StepScores]:
        searches = [_Search(it, 0, max(0, len(it.steps) - 1)) for it in items]
        exhaustive = self.search == "all"
        while True:
            probes = [(s, s.next_probe(exhaustive)) for s in searches]
            probes = [(s, i) for s, i in probes if i is not None]
            if not probes:
                return [s.result() for s in searches]
            self._estimate(probes)

    def _estimate(self, probes: list[tuple[_Search, int]]) -> None:
        """One teacher call per distinct sample count (usually one call for the whole round)."""
        plan = []
        for s, i in probes:
            have, ok = self._reused(s.item, i)
            plan.append((s, i, have, ok, max(0, self.sampling.n - have)))
        texts: dict[int, list[str]] = {}
        for m in sorted({p[4] for p in plan if p[4]}):
            group = [(j, p) for j, p in enumerate(plan) if p[4] == m]
            prompts = [self._prefix_prompt(p[0].item, p[1]) for _, p in group]
            seeds = [p[0].item.seed + 7919 * (p[1] + 1) for _, p in group]
            for (j, p), completions in zip(group, self.teacher.generate(prompts, m, self.sampling, seeds)):
                prefix = join_steps(list(p[0].item.steps[: p[1] + 1]))
                texts[j] = [prefix + c.text for c in completions]
                p[0].tokens += sum(c.tokens for c in completions)
        pairs = [(j, (p[0].item.gold, t)) for j, p in enumerate(plan) for t in texts.get(j, [])]
        verdicts = self.judge([pair for _, pair in pairs]) if pairs else []  # one grading batch per round
        wins = [0] * len(plan)
        for (j, _), ok in zip(pairs, verdicts):
            wins[j] += bool(ok)
        for j, (s, i, have, ok, m) in enumerate(plan):
            s.probes += 1
            if m and not texts.get(j) and not have:  # the teacher could not take the prefix prompt
                s.note = "too_long"
                continue
            s.record(i, (ok + wins[j]) / max(1, have + len(texts.get(j, []))))


class CachedScorer:
    """Serves scores already computed for the same (problem, steps); scores only the rest."""

    def __init__(self, inner: StepScorer, cache: dict[tuple[str, tuple[str, ...]], StepScores]):
        self.inner, self.cache, self.name = inner, cache, inner.name

    def score(self, items: Sequence[StepItem]) -> list[StepScores]:
        missing = [it for it in items if (it.problem_id, it.steps) not in self.cache]
        for it, res in zip(missing, self.inner.score(missing) if missing else []):
            self.cache[(it.problem_id, it.steps)] = res
        fresh = {(it.problem_id, it.steps) for it in missing}
        return [self.cache[k] if k in fresh else StepScores(self.cache[k].scores, self.cache[k].first_bad_step)
                for k in ((it.problem_id, it.steps) for it in items)]
