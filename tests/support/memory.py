"""Peak resident memory of the test process (which hosts the gateways and aggregators it starts)."""

from __future__ import annotations

import threading

import psutil


class PeakRss:
    """Samples this process's resident set size in a thread; `peak` is the largest seen."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval_s)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
