"""Final-answer extraction from model-written solutions: the markers real models write.

Every marker a solution uses is found with where its answer starts; **the one nearest the end wins** (a boxed
intermediate result loses to a later "Final Answer: The final answer is X"). Markers (`FORMATS`, and
`grade.answer_formats` to restrict them to what a source's teacher writes):

  boxed         `\\boxed{X}` / `\\fbox{X}` (braces balanced); several boxes in the final statement
                (`\\boxed{(2, 2)} and \\boxed{(6, 2)}`) are one answer, joined with ", "
  heading       `# Answer` then X on the next non-empty line (PRM800K / MATH style)
  final_answer  `Final Answer: The final answer is X` (up to ". I hope it is correct")
  hashes        `#### X` (GSM8K)
  answer_is     `The answer is X` / `Answer: X` (X up to the end of the sentence)
  bold          `**Answer:** X` / `**Final Answer:** X`
  last_number   the last number of the text — not a default: a bare trailing number is too often a step

A marker whose answer holds a box (`The answer is $\\boxed{5}$`) gives the box's content. Linear in
the length of the text whatever it holds (teacher output is not trusted).
"""

from __future__ import annotations

import re
from typing import AbstractSet, Callable, Iterable, Sequence

from tracefactory.config import DEFAULT_ANSWER_FORMATS

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_BETWEEN_BOXES = re.compile(r"[$\s]*(?:,|and|or|;|\\text\{\s*(?:and|or)\s*\}|\\quad|\\qquad)?[$\s.,]*")
_HEADING = re.compile(r"^#+\s*(?:Final\s+)?Answer\s*:?\s*$\n+^\s*(\S[^\n]*)", re.IGNORECASE | re.MULTILINE)
_FINAL = re.compile(r"Final Answer\s*:\s*The final answer is\s*(.+?)(?:\.?\s*I hope it is correct|\n|$)", re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]+)")
# "the answer is X", "Answer: X" at the start of a line — not "we may check our answer: ..." or "our
# answer is correct"
_ANSWER_IS = re.compile(
    r"(?:\bthe\s+(?:final\s+)?answer\s+is\b|^[ \t>*_]*(?:final\s+)?answer\s*:)\s*:?\s*"
    r"(?!(?:correct|right|wrong|incorrect|not)\b)(.+?)(?:\.\s|\.$|\n|$)",
    re.IGNORECASE | re.MULTILINE,
)
_BOLD = re.compile(r"\*\*(?:Final\s+)?Answer\s*:?\s*\*\*\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")

Candidate = tuple[int, str]  # (where the marker's answer starts, the answer)
# a format's reader: (text, its lower-cased form, where the format's keyword first occurs in that when the caller knows
# it — the lower-cased text is then not read) -> its candidates
Reader = Callable[[str, str, "int | None"], list[Candidate]]


def closing_braces(text: str, start: int = 0) -> dict[int, int]:
    """Position of each '{' from `start` on that closes -> position of its '}' (one pass: linear in the
    text). Braces before `start` cannot change these pairs: a pair closes on its own stack level."""
    closes, stack = {}, []
    for m in _BRACE.finditer(text, start):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closes[stack.pop()] = m.start()
    return closes


def boxes(text: str) -> list[tuple[int, int, str]]:
    """Every closed \\boxed{...} of `text`: (start, end, content)."""
    boxed, fbox = text.find("\\boxed"), text.find("\\fbox")
    if boxed < 0 and fbox < 0:  # the common case, found by a substring search
        return []
    first = fbox if boxed < 0 else boxed if fbox < 0 else min(boxed, fbox)
    found = list(_BOX.finditer(text, first))
    closes = closing_braces(text, first)
    out = []
    for m in found:
        end = closes.get(m.end() - 1)
        if end is not None:
            out.append((m.start(), end + 1, text[m.end() : end]))
    return out


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} in `text` whose braces close (nesting allowed); None if none."""
    found = boxes(text)
    return found[-1][2] if found else None


def _boxed(text: str, _low: str = "", _at: int | None = None) -> list[Candidate]:
    found = [b for b in boxes(text) if b[2].strip()]
    if not found:
        return []
    # the final statement's boxes: the last one and those right before it, separated only by "and", ","
    group = [found[-1]]
    for b in reversed(found[:-1]):
        gap = text[b[1] : group[0][0]]
        if b[1] > group[0][0] or len(gap) > 20 or not _BETWEEN_BOXES.fullmatch(gap):
            break
        group.insert(0, b)
    return [(group[0][0], ", ".join(c for _, _, c in group))]


def _pattern(pattern: re.Pattern, keyword: str) -> Reader:
    """The last match of `pattern`, which always contains `keyword` (lower case): the scan starts a
    little before the keyword's first occurrence (a substring search, or `at` where the caller found it; -1: none),
    or not at all without one."""

    def find(text: str, low: str, at: int | None = None) -> list[Candidate]:
        if at is None:
            at = low.find(keyword)
        if at < 0:
            return []
        found = None
        for found in pattern.finditer(text, max(0, at - 40)):  # noqa: B007 ("the final answer is": words before)
            pass
        return [(found.start(1), found.group(1))] if found else []

    return find


def _last_number(text: str, _low: str = "", _at: int | None = None) -> list[Candidate]:
    found = [(m.start(), m.group()) for m in _NUMBER.finditer(text)][-1:]
    return [(s, n) for s, n in found if not n.endswith(",")]


# the formats read by a regex, with the keyword each match holds
_PATTERNS: dict[str, tuple[re.Pattern, str]] = {
    "heading": (_HEADING, "answer"),
    "final_answer": (_FINAL, "final answer"),
    "hashes": (_HASHES, "####"),
    "answer_is": (_ANSWER_IS, "answer"),
    "bold": (_BOLD, "**"),
}
FORMATS: dict[str, Reader] = {
    "boxed": _boxed,
    **{name: _pattern(pattern, keyword) for name, (pattern, keyword) in _PATTERNS.items()},
    "last_number": _last_number,
}
DEFAULT_FORMATS = DEFAULT_ANSWER_FORMATS
# what a text must hold (lower-cased) for a format to find an answer in it: any one of its alternatives, every keyword
# of it (the markers' literal parts). A reader that searched many texts at once (`grading.reading`) passes the keywords
# it found absent, and extraction does not search for what cannot be there.
NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "boxed": (("\\boxed",), ("\\fbox",)),
    "heading": (("#", "answer"),),
    "final_answer": (("final answer",),),
    "hashes": (("####",),),
    "answer_is": (("answer",),),
    "bold": (("**", "answer"),),
    "last_number": ((),),
}
KEYWORDS = tuple(sorted({w for alternatives in NEEDS.values() for needs in alternatives for w in needs}))
assert not any(w.endswith("i") for w in KEYWORDS)  # see `grading.reading._scan`
_KEYWORD_AT = {name: KEYWORDS.index(keyword) for name, (_, keyword) in _PATTERNS.items()}
# the formats that search the lower-cased text: those whose keyword has letters
_CASE_BLIND = frozenset(name for name, (_, keyword) in _PATTERNS.items() if keyword != keyword.upper())
Plan = tuple[tuple[tuple[int, str, "int | None"], ...], bool]
_PLANS: dict[tuple[tuple[str, ...], AbstractSet[str]], Plan] = {}


def _plan(formats: tuple[str, ...], absent: AbstractSet[str]) -> Plan:
    """The (rank, format, index of its keyword in `KEYWORDS` if it has one)s to search a text for, given the keywords
    `absent` from it, and whether it is lower-cased."""
    plan = _PLANS.get((formats, absent))
    if plan is None:
        searched = tuple(
            (rank, name, _KEYWORD_AT.get(name))
            for rank, name in enumerate(formats)
            if any(absent.isdisjoint(needs) for needs in NEEDS[name])
        )
        plan = _PLANS[(formats, absent)] = searched, any(name in _CASE_BLIND for _, name, _ in searched)
    return plan


_DOLLARS = re.compile(r"^\$+|\$+$")  # $x$ and $$x$$
_DISPLAY = re.compile(r"^\\\[|\\\]$|^\\\(|\\\)$")


def clean(answer: str) -> str:
    answer = answer.strip()
    if "$" in answer or "\\" in answer:  # what the two patterns start with (the common answer has neither)
        answer = _DOLLARS.sub("", answer).strip()
        answer = _DISPLAY.sub("", answer).strip()
    return answer.rstrip(".").strip().rstrip(".").strip()


def extract_answer(
    text: str | None,
    formats: Iterable[str] = DEFAULT_FORMATS,
    absent: AbstractSet[str] = frozenset(),
    first: Sequence[int] | None = None,
) -> str | None:
    """The final answer of a solution: the answer of the marker nearest the end (see the module). `absent`: keywords
    (of `KEYWORDS`) known not to be in the lower-cased text — the formats that need them (`NEEDS`) are not searched.
    `first`: where each of `KEYWORDS` first occurs in the lower-cased text (-1: nowhere), when the caller found them
    (`grading.reading`, for many texts at once) — the text is then neither lower-cased nor searched for them."""
    if not text:
        return None
    searched, lower = _plan(tuple(formats), absent)
    low = text.lower() if lower and first is None else text
    found: list[tuple[int, int, str]] = []
    for rank, name, key in searched:
        for start, answer in FORMATS[name](text, low, None if first is None or key is None else first[key]):
            found.append((start, -rank, answer))
    for _, _, answer in sorted(found, reverse=True):  # latest marker first; ties: earlier-listed format
        inner = _boxed(answer) if "box" in answer else None  # \\boxed, \\fbox
        answer = clean(inner[0][1] if inner else answer)
        if answer and "\\boxed" not in answer:
            return answer
    return None
