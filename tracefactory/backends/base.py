"""The Teacher Protocol, its result type, and the factory that picks an implementation from config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from tracefactory.config import SamplingConfig, TeacherConfig

Prompt = str | list[dict]  # raw text, or chat messages rendered with the model's chat template


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"
    index: int  # sample index within the request, 0..n-1


class RequestFailed(list):
    """The result of a request that still failed after the teacher's retries: no completions (an empty
    list, so callers that only count completions need no special case) plus the error, so that a
    caller can record it and retry the request on a later run instead of losing the batch."""

    def __init__(self, error: str):
        super().__init__()
        self.error = error


# on_result(i, completions): called once per prompt as soon as its request finishes (any order)
OnResult = Callable[[int, list[Completion]], None]


@runtime_checkable
class Teacher(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingConfig,
                 seeds: Sequence[int] | None = None, on_result: OnResult | None = None) -> list[list[Completion]]:
        """n completions per prompt, one request per prompt; `seeds[i]` seeds prompt i's request.

        A prompt the teacher cannot take (longer than its context) gets an empty list; a request that
        failed for good gets a `RequestFailed`. `on_result` sees each prompt's result as it finishes,
        so callers can persist work before the whole batch is done.
        """
        ...


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.kind == "openai":
        from tracefactory.backends.openai_teacher import OpenAITeacher

        return OpenAITeacher(cfg)
    from tracefactory.backends.vllm_teacher import VLLMTeacher

    return VLLMTeacher(cfg)
