"""The Teacher Protocol, its result type, and the factory that picks an implementation from config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from tracefactory.config import SamplingConfig, TeacherConfig

Prompt = str | list[dict]  # raw text, or chat messages rendered with the model's chat template


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"
    index: int  # sample index within the request, 0..n-1


@runtime_checkable
class Teacher(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """n completions per prompt, one request per prompt; `seeds[i]` seeds prompt i's request.

        A prompt the teacher cannot take (longer than its context) gets an empty list.
        """
        ...


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.kind == "openai":
        from tracefactory.backends.openai_teacher import OpenAITeacher

        return OpenAITeacher(cfg)
    from tracefactory.backends.vllm_teacher import VLLMTeacher

    return VLLMTeacher(cfg)
