"""Peak resident memory of this process while inside a block, for the benchmark scripts."""

from __future__ import annotations

import os
import threading
import time

import psutil


class PeakMemory:
  """Samples this process's RSS in a thread; `base` is the level at entry, `peak` the maximum above it (bytes)."""

  def __enter__(self):
    self.process = psutil.Process(os.getpid())
    self.base = self.process.memory_info().rss
    self.peak = 0
    self.running = True
    self.thread = threading.Thread(target=self._sample, daemon=True)
    self.thread.start()
    return self

  def _sample(self):
    while self.running:
      self.peak = max(self.peak, self.process.memory_info().rss - self.base)
      time.sleep(0.002)

  def __exit__(self, *exc):
    self.running = False
    self.thread.join()
    self.peak = max(self.peak, self.process.memory_info().rss - self.base)
