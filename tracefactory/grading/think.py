"""A completion's anatomy as reasoning models write it: `<think>` reasoning `</think>` response.

R1-style teachers (DeepSeek-R1 and its distills, QwQ, Qwen3 thinking) reason inside a think block and
then answer. Their chat templates often open the block themselves (the generation prompt ends with
`<think>\\n`), so the completion starts inside it; others let the model write `<think>` itself.
`dissect` splits a completion into:

  cot        the assistant turn as a student must learn it: the template's opening restored in front
             of the completion (a student trained on the completion alone never opens its block)
  reasoning  inside the block (stripped), null for a teacher that does not think
  response   after `</think>` (stripped): the only text a final answer is taken from
  closed     whether the block was closed (null without a block)
  problem    why the completion cannot be a trace, whatever its body holds: `think_unclosed` (no
             `</think>`: a boxed answer in there is only tentative), `think_malformed` (closed more than
             once, or opened again inside the block), `empty_response` (nothing after `</think>`)

Modes (`prompt.thinking`): `on`, `off` (the whole completion is the answer text, as before), `auto`
(on when the template opens a block or the completion holds a think tag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

OPEN, CLOSE = "<think>", "</think>"
R1_OPENER = "<think>\n"  # what R1-distill templates append to the generation prompt
UNCLOSED = "think_unclosed"
MALFORMED = "think_malformed"
EMPTY_RESPONSE = "empty_response"
Thinking = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class ThinkSpec:
    """How a run's completions are read: `prompt.thinking`, and the opening its prompts end with."""

    mode: Thinking = "auto"
    opener: str = ""  # e.g. "<think>\n" when the teacher's chat template opens the block


NO_THINKING_KNOWN = ThinkSpec()  # auto, no template opener: the default where nothing else is known


@dataclass(frozen=True)
class Anatomy:
    cot: str
    reasoning: str | None
    response: str  # the answer text ("" when there is none)
    closed: bool | None
    problem: str | None = None
    reasoning_end: int = 0  # characters of the completion up to and including its `</think>` (all, if unclosed)


def opener_of(rendered_prompt: str) -> str:
    """The tail of a rendered generation prompt that opens a think block (`<think>\\n`), or ""."""
    at = rendered_prompt.rfind(OPEN)
    return rendered_prompt[at:] if at >= 0 and not rendered_prompt[at + len(OPEN) :].strip() else ""


def thinks(text: str, opener: str, mode: Thinking) -> bool:
    """Whether `text` is read as a think block."""
    if mode != "auto":
        return mode == "on"
    return bool(opener) or OPEN in text or CLOSE in text


class Spans(NamedTuple):
    """A completion's anatomy as positions in it (what `dissect` slices; what grading workers send back)."""

    restored: str  # the opening put back in front of the completion: cot = restored + text
    reasoning: tuple[int, int] | None  # [start, end) of the stripped reasoning; None without a block
    response: tuple[int, int]  # [start, end) of the response (stripped inside a block; the whole text without)
    closed: bool | None
    problem: str | None
    reasoning_end: int


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    """[start, end) of `text[start:end].strip()` in `text`."""
    part = text[start:end]
    left = len(part) - len(part.lstrip())
    if left == len(part):
        return start, start
    return start + left, end - (len(part) - len(part.rstrip()))


def spans(text: str, opener: str = "", mode: Thinking = "auto") -> Spans:
    """`dissect`'s anatomy as positions in `text`."""
    if not thinks(text, opener, mode):
        return Spans("", None, (0, len(text)), None, None, 0)
    head = text.lstrip()
    if not opener and head.startswith(OPEN):  # the model opened the block itself
        restored, skip = "", len(text) - len(head) + len(OPEN)
    else:
        restored, skip = opener or R1_OPENER, 0
    close = text.find(CLOSE, skip)
    if close < 0:
        return Spans(restored, _stripped(text, skip, len(text)), (len(text), len(text)), False, UNCLOSED, len(text))
    end = close + len(CLOSE)
    response = _stripped(text, end, len(text))
    problem = None
    if text.find(OPEN, skip, close) >= 0 or text.find(CLOSE, end) >= 0:
        problem = MALFORMED
    elif response[0] == response[1]:
        problem = EMPTY_RESPONSE
    return Spans(restored, _stripped(text, skip, close), response, True, problem, end)


def dissect(text: str, opener: str = "", mode: Thinking = "auto") -> Anatomy:
    """`text` is the completion as generated; `opener` the think-opening tail of the prompt the teacher saw
    ("" when its template opens no block; the R1 convention `<think>\\n` is restored for a completion that
    closes a block it never opened)."""
    s = spans(text, opener, mode)
    reasoning = None if s.reasoning is None else text[s.reasoning[0] : s.reasoning[1]]
    response = text[s.response[0] : s.response[1]]
    return Anatomy(s.restored + text, reasoning, response, s.closed, s.problem, s.reasoning_end)


def split_tokens(
    tokens: int, text: str, anatomy: Anatomy | Spans, reasoning_tokens: int | None
) -> tuple[int | None, int]:
    """(reasoning tokens, response tokens) of a completion of `tokens` tokens: the teacher's own count of the
    tokens up to its `</think>` when it has one (exact, from token ids), else `tokens` split by characters."""
    if anatomy.closed is None:
        return None, tokens
    if not anatomy.closed:
        return tokens, 0
    if reasoning_tokens is None:
        reasoning_tokens = round(tokens * anatomy.reasoning_end / max(1, len(text)))
    reasoning_tokens = min(tokens, reasoning_tokens)
    return reasoning_tokens, tokens - reasoning_tokens


def tokens_through(token_ids, end_id: int | None) -> int | None:
    """Completion tokens up to and including the first `end_id` (the `</think>` token); None without one."""
    if end_id is None:
        return None
    ids = list(token_ids)
    return ids.index(end_id) + 1 if end_id in ids else None
