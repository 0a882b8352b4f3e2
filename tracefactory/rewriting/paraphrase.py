"""Paraphrase through the teacher, kept only when the answer is shown to survive.

`paraphrase_prompt` asks the teacher to reword a problem (every number and the question asked kept);
`parse_paraphrase` pulls the reworded problem out of whatever the teacher wrote, or says why there is
none; `verify` is the gate: the teacher's own rollouts on each candidate must reach the problem's gold
at `min_pass_rate` or more, or the candidate is dropped (`not_answer_preserving`). A paraphrase that
changed a number, solved the problem instead, or merely copied it is refused before the gate.

A tiny teacher that cannot paraphrase (the embedded one) produces no candidate that passes: the gate
visibly rejects everything, which is the gate working, not the feature failing.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from tracefactory.backends.base import Prompt, Teacher
from tracefactory.backends.prompts import build_prompt
from tracefactory.config import PromptConfig, SamplingConfig
from tracefactory.grading.think import dissect
from tracefactory.rewriting.perturb import question_numbers
from tracefactory.rewriting.textnorm import normalise

INSTRUCTION = (
    "Rewrite the following math word problem in different words. Keep every number, every quantity and the "
    "question that is asked exactly as they are; do not solve it. Reply with the rewritten problem only.\n\n"
    "Problem: {question}"
)
_LABEL = re.compile(
    r"^\s*(?:sure[^\n:]*[:.!]\s*|here(?:'s| is)[^\n:]*:\s*)?"
    r"(?:\**(?:rewritten|reworded|paraphrased)?\s*(?:problem|question|version|paraphrase)\**\s*:\s*\**)?",
    re.IGNORECASE,
)
_STOP = re.compile(r"\n\s*\n|\n\s*(?:\**)?(?:answer|solution|note|explanation)\b", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def paraphrase_prompt(question: str) -> Prompt:
    return [{"role": "user", "content": INSTRUCTION.format(question=question)}]


def parse_paraphrase(text: str | None, original: str) -> tuple[str | None, str | None]:
    """(the reworded problem, None) or (None, the reason there is none)."""
    if not text or not text.strip():
        return None, "paraphrase_empty"
    body = text.strip().removeprefix("```").removesuffix("```").strip()
    body = _LABEL.sub("", body, count=1)
    body = _STOP.split(body, maxsplit=1)[0].strip().strip(_QUOTES).strip()
    if "\\boxed" in text or re.search(r"\banswer is\b", text, re.IGNORECASE):
        return None, "solved_not_paraphrased"
    if len(body) < 0.5 * len(original) or len(body) > 3 * len(original):
        return None, "paraphrase_unparseable"
    if normalise(body) == normalise(original):
        return None, "paraphrase_identical"
    if sorted(t.value for t in question_numbers(body)) != sorted(t.value for t in question_numbers(original)):
        return None, "numbers_changed"
    return body, None


def candidates(
    teacher: Teacher, questions: Sequence[str], params: SamplingConfig, seeds: Sequence[int]
) -> list[tuple[str | None, str | None]]:
    """One teacher call for every question: (paraphrase, None) or (None, reason) each."""
    results = teacher.generate([paraphrase_prompt(q) for q in questions], 1, params, seeds)
    out = []
    for q, r in zip(questions, results, strict=True):
        if not r.ok or not r.completions:
            out.append((None, "teacher_error" if not r.ok else "paraphrase_empty"))
        else:
            # a thinking teacher's rewrite is what follows its think block (none when the block never closed)
            out.append(parse_paraphrase(dissect(r.completions[0].text).response, q))
    return out


Judge = Callable[[list[tuple[str, str]]], list[bool]]  # (gold, completion text) pairs -> correct?


def verify(
    teacher: Teacher,
    judge: Judge,
    paraphrases: Sequence[str],
    golds: Sequence[str],
    prompt: PromptConfig,
    params: SamplingConfig,
    seeds: Sequence[int],
) -> list[float]:
    """The teacher's pass rate on each paraphrase against its problem's gold (one teacher call)."""
    if not paraphrases:
        return []
    results = teacher.generate([build_prompt(p, prompt) for p in paraphrases], params.n, params, seeds)
    pairs = [(g, c.text) for g, r in zip(golds, results, strict=True) for c in r.completions]
    verdicts = iter(judge(pairs))
    return [sum(next(verdicts) for _ in r.completions) / params.n for r in results]
