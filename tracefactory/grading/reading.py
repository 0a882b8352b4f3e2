"""Reading completions at scale: each completion's anatomy (`think.spans`), token split and final answer, in
worker processes, chunk by chunk.

A chunk travels as an Arrow table of the columns the reading needs (its buffers pickled as they are: half the
parent's time of a pickled polars frame, a fifth of the worker's; not as Python objects) and comes back as positions,
counts and the short extracted answers: the parent never turns the text column into Python strings, and builds the
`cot` / `reasoning` / `response` columns by slicing the text column in polars. Which answer markers' keywords a text
lacks is found for the whole chunk at once (polars), and extraction skips the searches it would make in vain.
Reading is linear in each text (extraction is), so a chunk needs no wall-clock budget of its own; Math-Verify, which
can hang, stays in the grading pool.
"""

from __future__ import annotations

import multiprocessing as mp
import re
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable

import polars as pl
import pyarrow as pa

from tracefactory.errors import BackendError
from tracefactory.grading.answers import KEYWORDS, NEEDS, extract_answer
from tracefactory.grading.pool import forget, kept
from tracefactory.grading.think import CLOSE, OPEN, ThinkSpec, spans, split_tokens, thinks
from tracefactory.grading.verify import fast_verdict
from tracefactory.store.schema import COT, COT_TOKENS, REASONING, REASONING_TOKENS, RESPONSE, TEXT

TAGS = (OPEN, CLOSE)  # a text without them is read without a think block (unless the template opened one)

# what a reading gives per completion (names that no rollouts column has)
RESTORED = "_read_restored"  # the think opening put back in front of the completion
REASONING_AT, REASONING_LEN = "_read_reasoning_at", "_read_reasoning_len"  # characters; null without a block
RESPONSE_AT, RESPONSE_LEN = "_read_response_at", "_read_response_len"
CLOSED, PROBLEM = "_read_closed", "_read_problem"
READ_REASONING_TOKENS, READ_RESPONSE_TOKENS = "_read_reasoning_tokens", "_read_response_tokens"
ANSWER = "_read_answer"
GOLD = "_read_gold"  # given with the texts (optional): each completion's gold, to give its verdict where it is certain
FAST_OK, FAST_WHY = "_read_fast_ok", "_read_fast_why"  # `verify.fast_verdict` of (gold, answer); null: not certain
READ_SCHEMA = {
    RESTORED: pl.String,
    REASONING_AT: pl.Int64,
    REASONING_LEN: pl.Int64,
    RESPONSE_AT: pl.Int64,
    RESPONSE_LEN: pl.Int64,
    CLOSED: pl.Boolean,
    PROBLEM: pl.String,
    READ_REASONING_TOKENS: pl.Int64,
    READ_RESPONSE_TOKENS: pl.Int64,
    ANSWER: pl.String,
    FAST_OK: pl.Boolean,
    FAST_WHY: pl.String,
}
# where a completion's sliced texts are: what a reading gives that `texts_of` turns into `cot`, `reasoning`, `response`
POSITIONS = (RESTORED, REASONING_AT, REASONING_LEN, RESPONSE_AT, RESPONSE_LEN)


def texts_of(columns: Iterable[str] = (COT, REASONING, RESPONSE)) -> list[pl.Expr]:
    """`cot` (the think opening restored in front of the completion), `reasoning` (inside the block; null without
    one) and `response` (after it; the whole text without a block) of each completion, sliced from `text` by the
    `POSITIONS` columns of its reading — those of `columns`."""
    text = pl.col(TEXT)
    restored = pl.col(RESTORED)
    reasoning = text.str.slice(pl.col(REASONING_AT), pl.col(REASONING_LEN))
    # the whole text where the response is all of it (no block): no slicing
    response = pl.when(pl.col(RESPONSE_LEN) == text.str.len_chars()).then(text)
    response = response.otherwise(text.str.slice(pl.col(RESPONSE_AT), pl.col(RESPONSE_LEN)))
    exprs = {
        COT: pl.when(restored == "").then(text).otherwise(pl.concat_str(restored, text)).alias(COT),
        REASONING: pl.when(pl.col(REASONING_AT).is_null()).then(None).otherwise(reasoning).alias(REASONING),
        RESPONSE: response.alias(RESPONSE),
    }
    return [exprs[c] for c in columns]


CHUNK_ROWS = 20_000  # rows per chunk sent to a worker
MIN_PARALLEL_ROWS = 2 * CHUNK_ROWS  # below this, starting workers costs more than it saves


def _first(texts: pl.Series, word: str) -> pl.Series:
    """Where each text's first `word` (ASCII, lower case) starts once the text is lower-cased as Python does
    (`str.lower`), in bytes; null where it may not be. A word without letters as it is (lower-casing adds none of its
    characters); one with letters case-blind, by Unicode's simple case folding — what folds to an ASCII letter is all
    that lower-cases to one (the Kelvin sign to "k"), save the dotted capital I, whose "i" comes with a combining dot
    after it (so no word here ends in "i"), and some more (the long s folds to "s"): null is certain, a position a
    superset, which extraction then searches as before. In an ASCII text both are exact, and bytes are characters."""
    if word == word.upper():
        return texts.str.find(word, literal=True)
    return texts.str.find("(?i)" + re.escape(word))


def _scan(
    texts: pl.Series, formats: tuple[str, ...], tags: bool
) -> tuple[list[frozenset[str]], list[tuple[int, ...] | None]]:
    """Per text, the formats' keywords (`answers.NEEDS`) and, with `tags`, the think tags its lower-cased form cannot
    hold; and for an ASCII text where each of `answers.KEYWORDS` first occurs in its lower-cased form (-1: nowhere, or
    not a keyword of `formats`), None for another: found for all the texts at once (polars, `_first`). Extraction
    skips the formats a text cannot have and neither lower-cases an ASCII text nor searches it for the keywords; the
    anatomy skips the tags a text lacks (a tag absent from the lower-cased text is absent from the text)."""
    words = sorted({*(w for name in formats for needs in NEEDS[name] for w in needs), *(TAGS if tags else ())})
    if not len(texts):
        return [], []
    texts = texts.fill_null("")
    at = {w: _first(texts, w) for w in words}
    bits = [at[w].is_null().cast(pl.Int64) * (1 << i) for i, w in enumerate(words)]
    mask = sum(bits[1:], bits[0]).to_list() if bits else [0] * len(texts)  # (no words: `last_number` alone)
    sets: dict[int, frozenset[str]] = {}
    for m in set(mask):
        sets[m] = frozenset(w for i, w in enumerate(words) if m >> i & 1)
    nowhere = pl.repeat(-1, len(texts), dtype=pl.Int64, eager=True)
    firsts = pl.DataFrame([(at[w].cast(pl.Int64) if w in at else nowhere).fill_null(-1).alias(w) for w in KEYWORDS])
    firsts = firsts.rows()
    ascii = (texts.str.len_bytes() == texts.str.len_chars()).to_list()
    return [sets[m] for m in mask], [f if a else None for f, a in zip(firsts, ascii, strict=True)]


def read_chunk(chunk: pl.DataFrame | pa.Table, think: ThinkSpec, formats: tuple[str, ...]) -> pl.DataFrame:
    """`READ_SCHEMA` for each row of `chunk` (columns `text`, `cot_tokens`, optional `reasoning_tokens` and `GOLD`; a
    polars frame, or the Arrow table a worker is sent: its buffers pickle without a copy into Python objects)."""
    chunk = chunk if isinstance(chunk, pl.DataFrame) else pl.from_arrow(chunk)
    looked = think.mode == "auto" and not think.opener  # where the anatomy looks for the tags (`think.thinks`)
    absent, firsts = _scan(chunk[TEXT], formats, tags=looked)
    texts = chunk[TEXT].to_list()
    n = len(texts)
    counted = chunk[REASONING_TOKENS].to_list() if REASONING_TOKENS in chunk.columns else [None] * n
    # what a completion read without a think block has (the common case): filled here for all, and overwritten
    # for those read with one
    cols: dict[str, list] = {
        RESTORED: [""] * n,
        REASONING_AT: [None] * n,
        REASONING_LEN: [None] * n,
        RESPONSE_AT: [0] * n,
        RESPONSE_LEN: chunk[TEXT].str.len_chars().to_list(),
        CLOSED: [None] * n,
        PROBLEM: [None] * n,
        READ_REASONING_TOKENS: [None] * n,
        READ_RESPONSE_TOKENS: chunk[COT_TOKENS].to_list(),
    }
    # the rows read with a think block: all of them when the mode or the template says so, else those that may hold a
    # tag (and do)
    maybe = range(n) if not looked else [i for i, skip in enumerate(absent) if not skip.issuperset(TAGS)]
    responses = texts  # what each answer is read from: the whole text without a block
    for i in [i for i in maybe if thinks(texts[i], think.opener, think.mode)]:
        responses = texts.copy() if responses is texts else responses
        text = texts[i]
        s = spans(text, think.opener, think.mode)
        at, end = s.response
        cols[RESTORED][i] = s.restored
        if s.reasoning is not None:
            cols[REASONING_AT][i], cols[REASONING_LEN][i] = s.reasoning[0], s.reasoning[1] - s.reasoning[0]
        cols[RESPONSE_AT][i], cols[RESPONSE_LEN][i] = at, end - at
        cols[CLOSED][i], cols[PROBLEM][i] = s.closed, s.problem
        tokens = cols[READ_RESPONSE_TOKENS][i]
        cols[READ_REASONING_TOKENS][i], cols[READ_RESPONSE_TOKENS][i] = split_tokens(tokens, text, s, counted[i])
        responses[i] = text[at:end]  # "" (an unclosed block) has no answer
        firsts[i] = None  # (where the keywords are in the whole text says nothing of where they are in the response)
    # a keyword absent from the whole text is absent from its response
    answers = [
        extract_answer(text, formats, skip, first) for text, skip, first in zip(responses, absent, firsts, strict=True)
    ]
    cols[ANSWER] = answers
    # each (gold, answer) of the chunk judged once, where `fast_verdict` is certain
    golds = chunk[GOLD].to_list() if GOLD in chunk.columns else [None] * n
    pairs = list(zip(golds, answers, strict=True))
    certain: dict[tuple[str, str], tuple[bool | None, str | None]] = {}
    for pair in pairs:
        if pair not in certain:
            certain[pair] = (None, None) if None in pair else fast_verdict(*pair) or (None, None)
    verdicts = [certain[pair] for pair in pairs]
    cols[FAST_OK] = [ok for ok, _ in verdicts]
    cols[FAST_WHY] = [why for _, why in verdicts]
    return pl.DataFrame(cols, schema=READ_SCHEMA)


def _chunks(frame: pl.DataFrame, rows: int) -> Iterable[pl.DataFrame]:
    for start in range(0, len(frame), rows):
        yield frame.slice(start, rows)


def read_completions(
    rollouts: pl.DataFrame,
    think: ThinkSpec,
    formats: tuple[str, ...],
    workers: int = 0,
    chunk_rows: int | None = None,
    min_parallel_rows: int | None = None,
) -> pl.DataFrame:
    """`read_chunk` of every row, in order: in `workers` spawned processes (at most two chunks each in flight,
    so memory holds a few chunks, not a copy of the column) when there are that many rows, else here. Chunks of
    `chunk_rows` (default `CHUNK_ROWS`), workers from `min_parallel_rows` rows on (`MIN_PARALLEL_ROWS`)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    least = MIN_PARALLEL_ROWS if min_parallel_rows is None else min_parallel_rows
    needed = rollouts.select(c for c in (TEXT, COT_TOKENS, REASONING_TOKENS, GOLD) if c in rollouts.columns)
    if workers == 0 or len(needed) < least:
        return read_chunk(needed, think, formats)
    parts: list[pl.DataFrame] = []
    key = ("read", workers)
    spawn = mp.get_context("spawn")
    pool, owned = kept(key, lambda: ProcessPoolExecutor(workers, mp_context=spawn), ProcessPoolExecutor.shutdown)
    try:
        flying: deque[Future] = deque()
        for chunk in _chunks(needed, chunk_rows):
            if len(flying) >= 2 * workers:
                parts.append(flying.popleft().result())
            flying.append(pool.submit(read_chunk, chunk.to_arrow(), think, formats))
        parts.extend(f.result() for f in flying)
    except BrokenProcessPool as e:
        owned = owned or forget(key)
        raise BackendError(
            "a worker reading completions died. Workers are spawned processes that import your main module again: "
            "a script that grades at import time needs an `if __name__ == '__main__':` guard. Otherwise look for "
            "too little memory."
        ) from e
    finally:
        if owned:
            pool.shutdown()
    return pl.concat(parts)
