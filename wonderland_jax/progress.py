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
