"""The Teacher Protocol and the typed result of one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence, runtime_checkable

from tracefactory.config import SamplingConfig

Prompt = str | list[dict]  # raw text, or chat messages rendered with the model's chat template


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"
    index: int  # sample index within the request, 0..n-1
    # tokens up to and including the first `</think>` token, counted on the token ids where the teacher has
    # them; None: no end tag, or not countable (the text is then split by characters, `think.split_tokens`)
    reasoning_tokens: int | None = None


@dataclass(frozen=True)
class RequestResult:
    """One prompt's outcome: its completions, or the error of a request that still failed after the
    teacher's retries (recorded, so that a later run retries that request instead of losing the batch).
    A prompt the teacher cannot take (longer than its context) has neither: no completions, no error."""

    completions: tuple[Completion, ...] = ()
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> "RequestResult":
        return cls((), error)

    @classmethod
    def of(cls, completions: Sequence[Completion]) -> "RequestResult":
        return cls(tuple(completions))

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class RendersPrompts(Protocol):
    """A teacher that can say what text a prompt becomes (its chat template applied, generation prompt added),
    without generating: where a template opens a think block the completion starts inside it."""

    def rendered_prompt(self, prompt: Prompt) -> str | None:
        """The rendered prompt, or None where it cannot be known (a server without a rendering endpoint)."""
        ...


# on_result(i, result): called once per prompt as soon as its request finishes (any order)
OnResult = Callable[[int, RequestResult], None]


@runtime_checkable
class Teacher(Protocol):
    name: str

    def start(self) -> None:
        """Load the model / open connections now (a no-op where there is nothing to load), so that
        stage timings exclude it; `generate` starts the teacher itself when it has not been."""
        ...

    def close(self) -> None:
        """Release engines and processes; the teacher may be started again afterwards."""
        ...

    def identity(self) -> dict:
        """What decides this teacher's output besides prompt and sampling (weights or revision, engine
        settings), JSON-able and cheap (no engine start): finished rollouts are keyed by it."""
        ...

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        params: SamplingConfig,
        seeds: Sequence[int] | None = None,
        on_result: OnResult | None = None,
    ) -> list[RequestResult]:
        """n completions per prompt, one request per prompt; `seeds[i]` seeds prompt i's request.

        `on_result` sees each prompt's result as it finishes, so callers can persist work before the
        whole batch is done.
        """
        ...
