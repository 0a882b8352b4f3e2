"""Peak memory of a benchmark: this process and its children (worker pools) together."""

from __future__ import annotations

import os
import threading

import psutil


class PeakRss:
    """The largest RSS of this process plus its children since `reset`, sampled by a thread."""

    def __init__(self, every_s: float = 0.02):
        self.me = psutil.Process(os.getpid())
        self.peak = 0
        self.every_s = every_s
        self.stopped = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> int:
        total = self.me.memory_info().rss
        for child in self.me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.peak = max(self.peak, self.now())

    def reset(self) -> None:
        self.peak = self.now()

    def mib(self) -> float:
        return round(max(self.peak, self.now()) / 2**20, 1)
