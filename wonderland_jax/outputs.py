"""The one output discipline every command follows: check first, stage everything, commit together, replace only
what this project wrote.

    check_output_directory(out, overwrite)            # before any work: writable, not a foreign directory
    with Outputs() as outputs:                        # several outputs of one command
      video = outputs.file(args.out, flag="--out", suffixes=VIDEO_EXTENSIONS)
      latents = outputs.file(args.latents, flag="--latents")
      ...                                             # the expensive work, writing to `video` and `latents`
    # leaving the block renames all of them into place, or none (a failure puts back what was there)

* Staging names are hidden siblings of the target, `.NAME.tmp-HOST-PID-HEX[.suffix]` (the suffix kept so writers
  that choose a format by extension see the right one). `clean_stale` removes the ones a dead process of this
  host left behind (a kill), once per directory per process; a `.NAME.old-...` directory whose target is missing
  (a kill in the middle of a swap) is put back instead.
* A directory this project writes carries `wonderland_manifest.json` ({written_by, version, created, files});
  `--overwrite` replaces a directory only when it has one (or another marker the caller names, such as a
  checkpoint's `wonderland_model.json`), never a directory of the user's.
* Storage failures (disk full, read-only file system, permission denied, a file-size limit, quota) raise
  `OutputError` naming the final path, never a traceback and never exit 0.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

from wonderland_jax.errors import OutputError, WonderlandError

logger = logging.getLogger(__name__)

MANIFEST = "wonderland_manifest.json"
_HOST = socket.gethostname()
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<role>tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[^.]+)?$")
_REASONS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large (a file-size limit was reached)",
            errno.ENOTDIR: "a parent is a file, not a directory", errno.EISDIR: "is a directory"}
_cleaned: set[Path] = set()


def staging_path(path: str | os.PathLike, role: str = "tmp") -> Path:
  """A fresh hidden sibling name of `path` for this process (`role` 'tmp' keeps `path`'s suffix)."""
  path = Path(path)
  suffix = path.suffix if role == "tmp" else ""
  return path.with_name(f".{path.name}.{role}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def process_alive(pid: int) -> bool:
  """Whether a process with this pid runs on this host (one of another user counts as running)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove(path: Path) -> None:
  if path.is_dir() and not path.is_symlink():
    shutil.rmtree(path, ignore_errors=True)
  else:
    path.unlink(missing_ok=True)


def clean_stale(directory: str | os.PathLike) -> None:
  """Removes the staging files / directories in `directory` that a dead process of this host left (once per
  directory per process); puts back a moved-aside `.old-` directory whose target is missing."""
  directory = Path(directory).absolute()
  if directory in _cleaned or not directory.is_dir():
    return
  _cleaned.add(directory)
  try:
    entries = list(directory.iterdir())
  except OSError:
    return
  for entry in entries:
    match = _STAGING.match(entry.name)
    if not match or match["host"] != _HOST or process_alive(int(match["pid"])):
      continue
    target = directory / match["name"]
    try:
      if match["role"] == "old" and not target.exists():
        os.replace(entry, target)
        logger.warning("put back %s, which an interrupted run (pid %s) had moved aside", target, match["pid"])
      else:
        _remove(entry)
        logger.info("removed %s, left by an interrupted run (pid %s)", entry, match["pid"])
    except OSError as error:
      logger.debug("could not clean %s: %s", entry, error)


def storage_errno(error: BaseException) -> int | None:
  """The errno of a storage failure (an OSError, or a tensorstore / Orbax error quoting `os_error_code`), following
  the exception's causes; None when it is not one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _REASONS:
      return error.errno
    text = str(error)
    match = re.search(r"os_error_code\D{0,3}(\d+)", text)
    if match and int(match[1]) in _REASONS:
      return int(match[1])
    if "No space left on device" in text:
      return errno.ENOSPC
    error = error.__cause__ or error.__context__
  return None


def storage_reason(error: BaseException) -> str:
  """A few words for a storage failure: 'no space left on device', 'read-only file system', ..."""
  number = storage_errno(error)
  if number is not None:
    return _REASONS[number]
  if isinstance(error, OSError) and error.strerror:
    return error.strerror.lower()
  return " ".join(str(error).split())[:200]


@contextlib.contextmanager
def write_errors(path: str | os.PathLike, what: str = "cannot write") -> Iterator[None]:
  """Turns an OSError (or a storage failure reported by another type) in the block into one `OutputError`
  '{path}: {what}: {reason}'."""
  try:
    yield
  except WonderlandError:
    raise
  except Exception as error:
    if isinstance(error, OSError) or storage_errno(error) is not None:
      raise OutputError(f"{path}: {what}: {storage_reason(error)}") from error
    raise


def _existing_ancestor(path: Path) -> Path:
  path = path.absolute()
  while not path.exists() and path != path.parent:
    path = path.parent
  return path


def check_writable(directory: str | os.PathLike, flag: str = "--out", target: str | os.PathLike | None = None) -> None:
  """Raises `OutputError` unless files can be created in `directory` (or the nearest existing directory above it,
  where it would be made): a probe file is created and removed. Messages name `target` (default `directory`)."""
  directory = Path(directory)
  ancestor = _existing_ancestor(directory)
  if target is not None:
    directory = target
  if not ancestor.is_dir():
    raise OutputError(f"{flag} {directory}: {ancestor} is a file, not a directory")
  probe = ancestor / f".wonderland-probe-{os.getpid()}-{secrets.token_hex(4)}"
  try:
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
  except OSError as error:
    raise OutputError(f"{flag} {directory}: cannot write in {ancestor}: {storage_reason(error)}") from None
  probe.unlink(missing_ok=True)


def check_free_space(path: str | os.PathLike, needed_bytes: float, flag: str = "--out") -> None:
  """Raises `OutputError` when the file system that would hold `path` has less than `needed_bytes` free."""
  ancestor = _existing_ancestor(Path(path))
  free = shutil.disk_usage(ancestor).free
  if free < needed_bytes:
    raise OutputError(f"{flag} {path}: needs about {needed_bytes / 2 ** 30:.2f} GiB, {ancestor} has "
                      f"{free / 2 ** 30:.2f} GiB free")


def check_output_file(path: str | os.PathLike, flag: str = "--out", suffixes: Sequence[str] | None = None) -> None:
  """Raises unless `path` can become an output file: the right extension, not an existing directory, a writable
  parent."""
  path = Path(path)
  if suffixes is not None and path.suffix.lower() not in suffixes:
    raise WonderlandError(f"{flag} {path}: unsupported extension {path.suffix!r}; use one of {tuple(suffixes)}")
  if path.is_dir():
    raise OutputError(f"{flag} {path}: is an existing directory; give a file name")
  check_writable(path.parent, flag, target=path)


def is_ours(path: str | os.PathLike, recognised: Sequence[str] = (MANIFEST,)) -> bool:
  """Whether the directory `path` holds one of the `recognised` marker files (this project wrote it)."""
  return any((Path(path) / name).is_file() for name in recognised)


def check_output_directory(path: str | os.PathLike, overwrite: bool = False, flag: str = "--out", *,
                           recognised: Sequence[str] = (MANIFEST,), kind: str = "written by wonderland") -> None:
  """Raises unless `path` can become an output directory: absent or empty, or (with `overwrite`) a directory this
  project wrote (one of the `recognised` markers inside); and its parent writable."""
  path = Path(path)
  if path.exists() or path.is_symlink():
    if not path.is_dir() or path.is_symlink():
      raise OutputError(f"{flag} {path}: exists and is not a directory")
    if any(path.iterdir()):
      if not overwrite:
        hint = "; pass --overwrite to replace it" if flag == "--out" else ""
        raise WonderlandError(f"{flag} {path}: exists and is not an empty directory{hint}")
      if not is_ours(path, recognised):
        raise OutputError(f"{flag} {path}: not {kind} (no {recognised[0]}); refusing to replace it")
  check_writable(path.parent, flag, target=path)


def write_manifest(directory: Path, files: Sequence[str] | None = None) -> None:
  """Writes `directory/wonderland_manifest.json` listing the files below it (relative paths)."""
  from wonderland_jax import __version__  # noqa: PLC0415 (the package imports this module)
  if files is None:
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
  manifest = {"written_by": "wonderland_jax", "version": __version__,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "files": list(files)}
  (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a staging path to write instead of `path`; moves it onto `path` on success.

  The staging file lives in the same directory (so the final `os.replace` is atomic) and keeps the suffix of
  `path`. It is not created in advance: the caller's writer creates it. The parent directory is created if
  needed. If the body raises, the staging file is removed and `path` is left as it was; a storage failure becomes
  an `OutputError` naming `path`. No fsync: this protects against crashes of the process, not power loss.
  """
  path = Path(path)
  with write_errors(path):
    path.parent.mkdir(parents=True, exist_ok=True)
  clean_stale(path.parent)
  tmp = staging_path(path)
  try:
    with write_errors(path):
      yield tmp
      os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def _swap_in(staging: Path, path: Path) -> Path | None:
  """Renames `staging` onto `path`, moving an existing `path` aside first; returns the moved-aside name (or None).
  On failure the previous `path` is put back."""
  old = None
  if path.exists() or path.is_symlink():
    old = staging_path(path, "old")
    os.replace(path, old)
  try:
    os.replace(staging, path)
  except BaseException:
    if old is not None:
      os.replace(old, path)
    raise
  return old


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, manifest: bool = True) -> Iterator[Path]:
  """Yields a fresh hidden staging directory next to `path` to fill instead of `path`; on success it replaces
  `path` (an existing one is moved aside and deleted only once the new one is in place, and put back if the swap
  fails). With `manifest`, `wonderland_manifest.json` is added first. On an exception the staging directory is
  removed and `path` is untouched; storage failures become one `OutputError` naming `path`. Callers decide
  beforehand (`check_output_directory`) whether replacing what is at `path` is allowed."""
  path = Path(path)
  with write_errors(path):
    path.parent.mkdir(parents=True, exist_ok=True)
  clean_stale(path.parent)
  staging = staging_path(path, "tmp").with_suffix("") if path.suffix else staging_path(path, "tmp")
  old = None
  try:
    with write_errors(path):
      staging.mkdir()
      yield staging
      if manifest:
        write_manifest(staging)
      old = _swap_in(staging, path)
  finally:
    _remove(staging)
    if old is not None:
      _remove(old)


class Outputs:
  """The outputs of one command, staged and committed together (see the module docstring).

  `file(path)` / `directory(path)` check the location now (before the work) and return the staging path to write;
  leaving the `with` block without an exception renames every staged output onto its target (and logs
  'wrote TARGET'); if one rename fails, those already done are undone and the previous files put back. On an
  exception nothing is renamed, the staging paths are removed, and the message names the targets, not the
  staging paths.
  """

  def __init__(self):
    self._staged: list[tuple[Path, Path, bool]] = []  # (staging, target, manifest)
    self._created: list[Path] = []  # parent directories made for the outputs

  def file(self, path: str | os.PathLike, *, flag: str = "--out", suffixes: Sequence[str] | None = None) -> Path:
    path = Path(path)
    check_output_file(path, flag, suffixes)
    self._make_parent(path)
    staging = staging_path(path)
    self._staged.append((staging, path, False))
    return staging

  def directory(self, path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out",
                manifest: bool = True, recognised: Sequence[str] = (MANIFEST,)) -> Path:
    path = Path(path)
    check_output_directory(path, overwrite, flag, recognised=recognised)
    self._make_parent(path)
    staging = staging_path(path, "tmp").with_suffix("") if path.suffix else staging_path(path)
    with write_errors(path):
      staging.mkdir()
    self._staged.append((staging, path, manifest))
    return staging

  def _make_parent(self, path: Path) -> None:
    missing = []
    parent = path.absolute().parent
    while not parent.exists():
      missing.append(parent)
      parent = parent.parent
    with write_errors(path):
      path.parent.mkdir(parents=True, exist_ok=True)
    self._created.extend(reversed(missing))
    clean_stale(path.parent)

  def __enter__(self) -> Outputs:
    return self

  def __exit__(self, kind, error, traceback) -> bool:
    if error is None:
      try:
        self.commit()
      except BaseException:
        self._discard()
        raise
      return False
    self._discard()
    if isinstance(error, WonderlandError) and error.args:
      message = str(error.args[0])
      for staging, target, _ in self._staged:
        message = message.replace(str(staging), str(target)).replace(staging.name, target.name)
      error.args = (message, *error.args[1:])
    elif isinstance(error, Exception) and storage_errno(error) is not None:
      targets = ", ".join(str(target) for _, target, _ in self._staged)
      raise OutputError(f"{targets}: cannot write: {storage_reason(error)}") from error
    return False

  def _discard(self) -> None:
    for staging, _, _ in self._staged:
      _remove(staging)
    for directory in reversed(self._created):
      with contextlib.suppress(OSError):
        directory.rmdir()  # only if still empty

  def commit(self) -> None:
    done: list[tuple[Path, Path | None]] = []
    for staging, target, manifest in self._staged:
      if not staging.exists():
        raise OutputError(f"{target}: nothing was written")
      try:
        if manifest:
          write_manifest(staging)
        done.append((target, _swap_in(staging, target)))
      except OSError as error:
        for written, old in reversed(done):  # undo: the command's outputs all land or none do
          _remove(written)
          if old is not None:
            os.replace(old, written)
        raise OutputError(f"{target}: cannot write: {storage_reason(error)}") from error
    for target, old in done:
      if old is not None:
        _remove(old)
      logger.info("wrote %s", target)
    self._created.clear()
