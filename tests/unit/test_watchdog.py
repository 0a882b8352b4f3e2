"""No orphans: what a killed process started dies with it (the watchdog), on Linux."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracefactory.store.watchdog import _processes, descendants

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")

PARENT = """
import subprocess, sys, time
from tracefactory.store import watchdog
watchdog.guard()
# a child that ignores SIGTERM (as a busy engine may) and has a child of its own
child = subprocess.Popen([sys.executable, "-c",
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
time.sleep(1.5)  # the watchdog has seen them
print("ready", flush=True)
time.sleep(600)
"""


def _gone(pids: dict[int, int], timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        procs = _processes()
        left = {p: s for p, s in pids.items() if p in procs and procs[p][1] == s}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_sigkill_of_a_process_takes_its_descendants_with_it():
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        family = descendants(proc.pid, _processes())
        watchdogs = [p for p in family if b"tracefactory.store.watchdog" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(watchdogs) == 1 and len(family) == 3  # the watchdog, the child, the grandchild
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _gone(family, timeout=15) == {}  # the SIGTERM-proof child too (SIGKILL after the grace)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
