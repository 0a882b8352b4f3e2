"""No orphans: the processes a run starts (vLLM's EngineCore and workers, Prefect's temporary server,
grading workers) die with it, whoever kills it and however.

SIGKILL gives a process no chance to clean up, and its children are re-parented to init, where an
orphaned engine keeps gigabytes of memory (on a GPU: the memory the resumed run needs). So `guard()`
starts a small watchdog process, in a session of its own, that notes every descendant of the run every
`POLL_S` seconds (pid and start time, from /proc); once the run is gone it sends SIGTERM to each
descendant still alive, waits `GRACE_S`, sends SIGKILL, and exits. Linux only (elsewhere a no-op).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
POLL_S = 0.5
GRACE_S = 3.0
PROC = Path("/proc")
_guarded: set[int] = set()  # pids this process started a watchdog for


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of `pid`, or None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), int(fields[19])


def _processes() -> dict[int, tuple[int, int]]:
    out = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                out[int(entry.name)] = st
    return out


def descendants(root: int, procs: dict[int, tuple[int, int]]) -> dict[int, int]:
    """{pid: start time} of every descendant of `root` in `procs`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out[pid] = procs[pid][1]
        todo.extend(children.get(pid, []))
    return out


def _alive(known: dict[int, int]) -> dict[int, int]:
    """Those of `known` still running (same pid AND start time: not a recycled pid), with their new children."""
    procs = _processes()
    alive = {pid: start for pid, start in known.items() if pid in procs and procs[pid][1] == start}
    for pid in list(alive):
        alive.update(descendants(pid, procs))
    alive.pop(os.getpid(), None)
    return alive


def _signal(pids, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def watch(pid: int) -> None:
    """The watchdog's body: follow `pid`'s descendants until it is gone, then end them."""
    first = _stat(pid)
    if first is None:
        return
    known: dict[int, int] = {}
    while (now := _stat(pid)) is not None and now[1] == first[1]:
        known.update(descendants(pid, _processes()))
        known.pop(os.getpid(), None)
        time.sleep(POLL_S)
    left = _alive(known)
    if not left:
        return
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(left)
    _signal(left, signal.SIGKILL)


def guard() -> None:
    """Start a watchdog for this process (once per process; a no-op where there is no /proc)."""
    me = os.getpid()
    if me in _guarded or not (PROC / str(me) / "stat").is_file():
        return
    _guarded.add(me)
    subprocess.Popen(
        [sys.executable, "-m", "tracefactory.store.watchdog", str(me)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the run's process group: a signal to the group does not reach it
        close_fds=True,
    )
    log.debug("watchdog started for pid %d", me)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
