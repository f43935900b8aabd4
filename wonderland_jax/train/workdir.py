"""A training workdir: checked before anything is built, and held by one run at a time.

    check_workdir(workdir)                      # a directory (or creatable), writable; else one OutputError
    with WorkdirLock(workdir, force=False):     # refuses a second run while the first is alive
      ...

The lock is `<workdir>/wonderland.lock`, created exclusively (`O_EXCL`) and holding JSON {host, pid, started,
argv}; a background thread touches it every `HEARTBEAT_SECONDS`. A lock is stale, and taken over with a warning,
when its process is gone: on the same host, when its pid is no longer running; from another host (a shared file
system), when its heartbeat is older than `STALE_SECONDS`. `force=True` (`wonderland train --force`) takes over
any lock, for the case the staleness cannot be seen (a dead node whose file system clock drifts). The lock is
removed when the run ends, however it ends, unless another run has taken it over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

from wonderland_jax.errors import OutputError, WonderlandError
from wonderland_jax.outputs import check_writable, process_alive

logger = logging.getLogger("wonderland_jax")

LOCK = "wonderland.lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0


def check_workdir(workdir: str | os.PathLike) -> Path:
  """Raises `OutputError` unless `workdir` is (or can be made) a writable directory; returns it as a Path."""
  workdir = Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise OutputError(f"--workdir {workdir}: is a file, not a directory")
  check_writable(workdir, "--workdir")
  return workdir


class WorkdirLock:
  """See the module docstring. Re-entrant use is not supported: one lock object per run."""

  def __init__(self, workdir: str | os.PathLike, *, force: bool = False):
    self.path = Path(workdir) / LOCK
    self.force = force
    self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "argv": sys.argv}
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _holder(self) -> dict | None:
    """The current lock's record (None when there is no lock; {} when it is unreadable)."""
    try:
      return json.loads(self.path.read_text(encoding="utf-8"))
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}

  def _stale(self, holder: dict) -> str | None:
    """Why the lock `holder` describes is stale, or None if its run may be alive."""
    try:
      age = time.time() - self.path.stat().st_mtime
    except FileNotFoundError:
      return "gone"
    if holder.get("host") == self._record["host"] and isinstance(holder.get("pid"), int):
      return None if process_alive(holder["pid"]) else f"process {holder['pid']} is not running"
    if age > STALE_SECONDS:
      return f"no heartbeat for {age:.0f} s"
    return None

  def _create(self) -> bool:
    try:
      descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    except OSError as error:
      raise OutputError(f"--workdir {self.path.parent}: cannot create {LOCK}: {error.strerror}") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
      json.dump(self._record, stream)
    return True

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
      if self._create():
        break
      holder = self._holder()
      if holder is None:
        continue  # released in between
      reason = "--force" if self.force else self._stale(holder)
      if reason is None:
        command = " ".join(holder.get("argv") or []) or "?"
        raise WonderlandError(
            f"--workdir {self.path.parent}: in use by another run (host {holder.get('host', '?')}, pid "
            f"{holder.get('pid', '?')}, started {holder.get('started', '?')}: {command}); wait for it to end, or "
            f"pass --force if it is dead (its lock: {self.path})")
      logger.warning("--workdir %s: taking over the lock of host %s pid %s (%s)", self.path.parent,
                     holder.get("host", "?"), holder.get("pid", "?"), reason)
      self.path.unlink(missing_ok=True)
    else:
      raise WonderlandError(f"--workdir {self.path.parent}: cannot take {self.path} (another run keeps taking it)")
    self._thread = threading.Thread(target=self._beat, name="wonderland-workdir-lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    holder = self._holder()
    if holder and holder.get("host") == self._record["host"] and holder.get("pid") == self._record["pid"]:
      self.path.unlink(missing_ok=True)

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
