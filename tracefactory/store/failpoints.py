"""Crash points for the resume tests: with TRACEFACTORY_FAILPOINT=NAME[:K] the process SIGKILLs itself
the K-th time (default: the first) it reaches `failpoint(NAME)` — no cleanup, no flushing, exactly as
an OOM kill or a lost node would end it. Unset (as it is for users) a failpoint is one dict lookup.

Points: `rollout.chunk_committed` (after a chunk of finished requests is on disk), `budget.round_closed`
(a rollout round's tallies decided, the next round not begun), `grade.batch`
(a grading batch read, its verdicts not yet given; and half-way through the grading pool's pairs), `write.table`
(between the output tables of a run).
"""

from __future__ import annotations

import os
import signal

ENV = "TRACEFACTORY_FAILPOINT"
_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, k = spec.partition(":")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)
