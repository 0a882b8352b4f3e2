"""A grading pool that never hangs: each (gold, answer) pair has a wall-clock budget.

Workers are spawned processes that grade one pair at a time and answer after each. The parent
tracks when each worker took its pair; a worker still busy past `timeout_s` (stuck in C code that
Math-Verify's `signal.alarm` cannot interrupt, e.g. a huge power of a huge integer) is killed, its
pair is marked `grade_timeout`, and a fresh worker takes its place. A worker that dies marks its
pair `grade_error`. Inside a worker Math-Verify still gets its own (signal) timeouts, so most slow
pairs end without a replacement. A worker that never says it is ready within `start_timeout_s` is
replaced too; when workers keep dying (or hanging) before they are ready — `start_failures` in a row —
the pool stops with a BackendError naming the likely cause instead of replacing them for ever.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterator, Sequence

from tracefactory.errors import BackendError
from tracefactory.grading.outcomes import ERROR, TIMEOUT, Pair, Verdict
from tracefactory.store.failpoints import failpoint

log = logging.getLogger(__name__)
# grade(gold, pred, timeout_s) -> verdict; a module-level function (spawned workers import it by name)
GradeFn = Callable[[str, str | None, float | None], Verdict]


def _worker(conn: Connection, fn: GradeFn, inner_timeout_s: float | None) -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        idx, gold, pred = msg
        conn.send((idx, fn(gold, pred, inner_timeout_s)))


class _Slot:
    def __init__(self, ctx, fn: GradeFn, inner_timeout_s: float | None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, fn, inner_timeout_s), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.started = time.monotonic()
        self.busy: int | None = None  # index of the pair being graded
        self.since = 0.0  # when it was taken

    def take(self, idx: int, pair: Pair) -> None:
        self.conn.send((idx, *pair))
        self.busy = idx
        self.since = time.monotonic()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()


class GradePool:
    """`workers` spawned processes running `fn` on one pair at a time, `timeout_s` of wall clock each."""

    def __init__(
        self,
        fn: GradeFn,
        workers: int,
        timeout_s: float,
        start_timeout_s: float = 120.0,
        start_failures: int = 3,
        name: str = "grade",
    ):
        self.fn = fn
        self.name = name  # its failpoint: `<name>.batch`, half-way through a batch
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.start_failures = start_failures
        self.failed_starts = 0  # workers in a row that died or hung before they were ready
        # Math-Verify's own alarms (whole seconds, parse and verify each) fit inside the hard budget
        inner = int(timeout_s // 2)
        self.inner = inner if inner >= 1 else None
        self.ctx = mp.get_context("spawn")
        self.slots = [_Slot(self.ctx, fn, self.inner) for _ in range(max(1, workers))]
        self.replaced = 0

    def __enter__(self) -> "GradePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for s in self.slots:
            s.stop()
        self.slots = []

    def _replace(self, slot: _Slot, why: str) -> None:
        slot.stop(kill=True)
        if not slot.ready:
            self.failed_starts += 1
            if self.failed_starts >= self.start_failures:
                self.slots.remove(slot)
                self.close()
                raise BackendError(
                    f"grading workers failed to start {self.failed_starts} times in a row ({why}, exit code "
                    f"{slot.proc.exitcode}). Workers are spawned processes that import your main module again: "
                    "a script that grades at import time needs an `if __name__ == '__main__':` guard. Otherwise "
                    "look for too little memory or a broken math-verify install."
                )
        self.slots[self.slots.index(slot)] = _Slot(self.ctx, self.fn, self.inner)
        self.replaced += 1
        log.warning("grading worker replaced (%s)", why)

    def grade(self, pairs: Sequence[Pair]) -> list[Verdict]:
        results: list[Verdict | None] = [None] * len(pairs)
        pending = deque(range(len(pairs)))  # indices not yet handed to a worker
        left = len(pairs)  # verdicts still to come
        halfway = len(pairs) // 2
        while left:
            for s in list(self.slots):
                if s.ready and s.busy is None and pending:
                    i = pending.popleft()
                    try:
                        s.take(i, pairs[i])
                    except OSError:  # died while idle: the pair goes back to the queue
                        pending.appendleft(i)
                        self._replace(s, "died")
            by_conn = {s.conn: s for s in self.slots}
            for conn in wait(list(by_conn), timeout=0.05):
                s = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):  # the worker died (out of memory, a crash in C code)
                    if s.busy is not None:
                        results[s.busy] = (False, ERROR)
                        left -= 1
                    self._replace(s, "died")
                    continue
                if msg == "ready":
                    s.ready = True
                    self.failed_starts = 0
                else:
                    idx, verdict = msg
                    results[idx] = verdict
                    s.busy = None
                    left -= 1
                    if left == halfway:
                        failpoint(f"{self.name}.batch")
            now = time.monotonic()
            for s in list(self.slots):
                if not s.ready and now - s.started > self.start_timeout_s:
                    self._replace(s, f"not ready after {self.start_timeout_s:g} s")
                    continue
                if s.busy is not None and now - s.since > self.timeout_s:
                    gold, pred = pairs[s.busy]
                    log.warning(
                        "grading %r took over %.1f s", (pred if pred is not None else gold)[:80], self.timeout_s
                    )
                    results[s.busy] = (False, TIMEOUT)
                    left -= 1
                    self._replace(s, "timeout")
        return results  # type: ignore[return-value]


# while `kept_workers` is entered: each kind of worker pool started in it, by its key, with how to stop it
_KEPT: dict[tuple, tuple[Any, Callable[[], None]]] | None = None


@contextlib.contextmanager
def kept_workers() -> Iterator[None]:
    """Within it, the worker pools grading starts (reading completions, Math-Verify) stay up for the next call that
    asks for the same kind: a streamed grade calls them slice after slice, and spawning workers costs a second or
    two each time. They are stopped on the way out."""
    global _KEPT
    if _KEPT is not None:
        yield
        return
    _KEPT = {}
    try:
        yield
    finally:
        pools, _KEPT = list(_KEPT.values()), None
        for _, stop in pools:
            stop()


def kept_on() -> bool:
    return _KEPT is not None


def kept(key: tuple, make: Callable[[], Any], stop: Callable[[Any], None]) -> tuple[Any, bool]:
    """The pool of `key` kept by `kept_workers` (made by `make` the first time, stopped by `stop` on the way out), or
    a new one outside it; and whether the caller owns it (must stop it)."""
    if _KEPT is None:
        return make(), True
    if key not in _KEPT:
        pool = make()
        _KEPT[key] = (pool, lambda: stop(pool))
    return _KEPT[key][0], False


def forget(key: tuple) -> bool:
    """A kept pool that broke is no longer handed out: True (the caller now owns it, to stop it) if it was kept."""
    return _KEPT is not None and _KEPT.pop(key, None) is not None
