"""Peak memory of a benchmark: this process and its children (worker pools) together."""

from __future__ import annotations

import os
import threading
import time

import psutil


class PeakRss:
    """The largest RSS of this process plus its children since `reset`, sampled by a thread. The children are
    listed again every `list_every_s` (listing them reads every process's /proc entry: at every sample it took ~15%
    of a 2-core machine's time from what was measured); a worker started since is counted from the next listing."""

    def __init__(self, every_s: float = 0.02, list_every_s: float = 1.0):
        self.me = psutil.Process(os.getpid())
        self.peak = 0
        self.every_s, self.list_every_s = every_s, list_every_s
        self.children: list[psutil.Process] = []
        self.listed = 0.0
        self.stopped = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> int:
        if time.monotonic() - self.listed >= self.list_every_s:
            self.children, self.listed = self.me.children(recursive=True), time.monotonic()
        total = self.me.memory_info().rss
        for child in self.children:
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.peak = max(self.peak, self.now())

    def reset(self) -> None:
        self.listed = 0.0  # a stage's workers are counted from its start
        self.peak = self.now()

    def mib(self) -> float:
        return round(max(self.peak, self.now()) / 2**20, 1)
