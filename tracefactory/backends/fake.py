"""A deterministic Teacher for unit tests — never what a user runs.

For `synth`-style questions it solves the problem step by step and, for some seeded samples, makes
an arithmetic slip on the last step, so that grading, selection and difficulty have real work to do.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from tracefactory.backends.base import Completion, OnResult, Prompt, RequestResult
from tracefactory.config import SamplingConfig

_START = re.compile(r"has (\d+) ")
_OPS = [
    (re.compile(r"(?:gets|buys|finds|wins) (\d+) more"), lambda v, x: (v + x, f"{v} + {x}")),
    (re.compile(r"(?:gives away|loses|sells|uses) (\d+)"), lambda v, x: (v - x, f"{v} - {x}")),
    (re.compile(r"doubles them"), lambda v, x: (v * 2, f"{v} * 2")),
    (re.compile(r"triples them"), lambda v, x: (v * 3, f"{v} * 3")),
    (re.compile(r"ends up with (\d+) times"), lambda v, x: (v * x, f"{v} * {x}")),
    (re.compile(r"into (\d+) equal groups"), lambda v, x: (v // x, f"{v} / {x}")),
]
# a step it can only take with the answer in view (a hinted prompt): for STaR tests, problems it never solves unaided
_HINT_ONLY_OPS = [(re.compile(r"squares them"), lambda v, x: (v * v, f"{v} * {v}"))]
_HINT = re.compile(r"\nHint: the final answer is (.+?)\. Show the working that leads to it\.$")  # the default template


def solve(question: str, rng: random.Random, slip_rate: float, prefix: str = "", ops=_OPS) -> str:
    """A worked solution; with `prefix` (earlier steps, possibly wrong) only its continuation,
    carrying on from the value the prefix's last line reached."""
    m = _START.search(question)
    if not m:
        return "I do not know."
    done = [ln for ln in prefix.splitlines() if "=" in ln]
    value, lines = int(m.group(1)), []
    steps = [s for s in question.split(". ")[1:] if any(p.search(s) for p, _ in _OPS + _HINT_ONLY_OPS)]
    for k, sentence in enumerate(steps):
        if k < len(done):
            value = int(done[k].rsplit("=", 1)[1])
            continue
        known = next(((p, o) for p, o in ops if p.search(sentence)), None)
        if known is None:  # a step it cannot take unaided: a wrong guess, a different one per sample
            guess = rng.randint(1, 50)
            guess += next(o(value, 0)[0] for p, o in _HINT_ONLY_OPS if p.search(sentence)) == value + guess
            value, expr = value + guess, f"{value} + {guess}"
        else:
            pat, op = known
            hit = pat.search(sentence)
            value, expr = op(value, int(hit.group(1)) if hit.groups() else 0)
        lines.append(f"{expr} = {value}")
    if lines and rng.random() < slip_rate * len(lines):
        value += rng.choice([-1, 1, 10])
        lines[-1] = lines[-1].rsplit("=", 1)[0] + f"= {value}"
    return "\n".join(lines + [f"The answer is \\boxed{{{value}}}."])


def rationale(question: str, gold: str, rng: random.Random, slip_rate: float, how: str) -> str:
    """What it writes for a hinted question: `derive` works it out with the steps it only knows with the answer
    in view; `restate` says it was given the answer; `assert` states the answer with steps that derive nothing."""
    if how == "restate":
        return f"We are told the final answer is {gold}.\nThe answer is \\boxed{{{gold}}}."
    if how == "assert":
        return f"Let me think about the question.\nIt comes to {gold}.\nThe answer is \\boxed{{{gold}}}."
    return solve(question, rng, slip_rate, ops=_OPS + _HINT_ONLY_OPS)


class FakeTeacher:
    name = "fake/arith-solver"

    def __init__(
        self,
        slip_rate: float = 0.1,
        context_chars: int | None = None,
        fail_questions: Sequence[str] = (),
        weights: str = "v1",
        thinks: bool = False,
        unclosed_rate: float = 0.0,
        hints: str | None = None,
    ):
        # thinks: R1-shaped, as if its chat template opened the block (`<think>\n`): the equations, `</think>`, a
        # blank line, the boxed answer; `unclosed_rate` of samples stop inside the block (a tentative box there)
        self.thinks = thinks
        self.hints = hints  # how it answers a hinted question (`rationale`); None: as any other question
        self.unclosed_rate = unclosed_rate
        self.slip_rate = slip_rate
        self.weights = weights  # stands for a weights file: another value, another teacher
        self.context_chars = context_chars
        self.fail_questions = set(fail_questions)
        self.calls: list[int] = []  # prompts per generate() call, for tests
        self.hinted = 0  # hinted questions it was asked (rationales)

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def identity(self) -> dict:
        # fail_questions are faults of the moment, not of the teacher: they stay out of its identity
        return {
            "kind": "fake",
            "name": self.name,
            "weights": self.weights,
            "slip_rate": self.slip_rate,
            "context_chars": self.context_chars,
            **({"thinks": True, "unclosed_rate": self.unclosed_rate} if self.thinks else {}),
            **({"hints": self.hints} if self.hints else {}),
        }

    def rendered_prompt(self, prompt: Prompt) -> str | None:
        text, prefix = _question_and_prefix(prompt)
        return f"Q: {text}\nA: " + (prefix if prefix else "<think>\n" if self.thinks else "")

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        params: SamplingConfig,
        seeds: Sequence[int] | None = None,
        on_result: OnResult | None = None,
    ) -> list[RequestResult]:
        seeds = list(seeds) if seeds is not None else [params.seed] * len(prompts)
        self.calls.append(len(prompts))
        out = []
        for k, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            out.append(self._one(prompt, seed, n, params))
            if on_result:
                on_result(k, out[-1])
        return out

    def _one(self, prompt: Prompt, seed: int, n: int, params: SamplingConfig) -> RequestResult:
        text, prefix = _question_and_prefix(prompt)
        if text in self.fail_questions:  # a request that failed for good (after a server's retries)
            return RequestResult.failed(f"injected failure for {text[:40]!r}")
        if self.context_chars is not None and len(text) + len(prefix) > self.context_chars:
            return RequestResult()  # like vLLM: a prompt longer than the context gets nothing
        samples = []
        for i in range(n):
            rng = random.Random(seed + i if self.weights == "v1" else f"{self.weights}:{seed + i}")
            hinted = _HINT.search(text) if self.hints and not prefix else None
            if hinted:
                self.hinted += i == 0
                cot = rationale(text[: hinted.start()], hinted.group(1), rng, self.slip_rate, self.hints)
            else:
                cot = solve(text, rng, self.slip_rate, prefix)
            if self.thinks:
                *body, final = cot.splitlines()
                closing = "\n" if rng.random() < self.unclosed_rate else "\n</think>\n\n"
                cot = "\n".join(body) + closing + final
            finish = "stop"
            if len(cot) > params.max_tokens:
                cot, finish = cot[: params.max_tokens], "length"
            samples.append(Completion(cot, len(cot), finish, i))
        return RequestResult.of(samples)


def _question_and_prefix(prompt: Prompt) -> tuple[str, str]:
    """Chat prompts may end with a partial assistant message to continue (step-prefix scoring)."""
    if isinstance(prompt, str):
        return prompt, ""
    users = [m["content"] for m in prompt if m["role"] == "user"]
    prefix = prompt[-1]["content"] if prompt[-1]["role"] == "assistant" else ""
    return users[-1], prefix
