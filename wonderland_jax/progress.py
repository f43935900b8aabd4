"""Progress reporting: a tqdm bar on a terminal, plain log lines (about every 10%) otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import tqdm

logger = logging.getLogger("wonderland_jax")
T = TypeVar("T")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None) -> Iterator[T]:
  """Yields from `iterable`, showing progress for a loop a user waits on."""
  if total is None and hasattr(iterable, "__len__"):
    total = len(iterable)
  if sys.stderr.isatty():
    yield from tqdm.tqdm(iterable, desc=desc, total=total, dynamic_ncols=True)
    return
  start = time.monotonic()
  every = max(1, (total or 10) // 10)
  count = 0
  for count, item in enumerate(iterable, 1):
    yield item
    if count % every == 0 or count == total:
      of_total = f"/{total}" if total else ""
      logger.info("%s: %d%s (%.1fs)", desc, count, of_total, time.monotonic() - start)


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class StepProgress:
  """Progress of a step loop that may start part-way (a resumed job): steps/s, ETA and a few named values.

      bar = StepProgress(total=1000, initial=250, desc="train", log_every=50)
      bar.update(251, loss=0.12)
      bar.close()

  A tqdm bar on a terminal; otherwise a log line every `log_every` steps and at the end.
  """

  def __init__(self, *, total: int, initial: int = 0, desc: str, log_every: int = 100):
    self.total, self.desc, self.log_every = total, desc, max(1, log_every)
    self._start_step, self._start_time = initial, time.monotonic()
    self._bar = (tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
                 if sys.stderr.isatty() else None)
    self._last = initial

  def steps_per_second(self, step: int) -> float:
    elapsed = time.monotonic() - self._start_time
    return (step - self._start_step) / elapsed if elapsed > 0 else 0.0

  def update(self, step: int, **values: float) -> None:
    rate = self.steps_per_second(step)
    shown = {name: f"{value:.4g}" for name, value in values.items()}
    if self._bar is not None:
      self._bar.update(step - self._last)
      self._bar.set_postfix(shown, refresh=False)
    elif step % self.log_every == 0 or step == self.total:
      eta = (self.total - step) / rate if rate > 0 else float("nan")
      details = " ".join(f"{name} {value}" for name, value in shown.items())
      logger.info("%s: step %d/%d %s %.2f steps/s ETA %s", self.desc, step, self.total, details, rate,
                  _duration(eta) if eta == eta else "?")
    self._last = step

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
