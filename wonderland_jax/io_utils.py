"""Atomic output helpers (JSON, video, PNG) and image reading, used by every writer in the project.

Every writer goes through `outputs.atomic_path`: the data is written to a hidden staging file next to the
target and moved onto it with `os.replace` only once writing succeeded (and, for videos, the file was read
back), so a crash, a full disk or a failed encoder never leaves a half-written file at the target (and an
older file there survives untouched). `atomic_directory`, `atomic_path` and `check_output_directory` are
re-exported from `outputs`.

Image conventions: arrays are (H, W, 3) RGB, either uint8 or floating point in [0, 1]; floats are
clipped to [0, 1] and rounded to uint8 on writing. `read_image` returns float32 in [0, 1].
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import imageio.v2 as iio2
import imageio.v3 as iio3
import numpy as np

from wonderland_jax.errors import InputFileError, OutputError, WonderlandError
from wonderland_jax.outputs import atomic_directory, atomic_path, check_output_directory, storage_reason

__all__ = ["atomic_directory", "atomic_path", "check_output_directory", "read_image", "to_uint8", "write_json",
           "write_png", "write_png_dir", "write_png_sequence", "write_video"]

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".gif")


def _json_default(value: Any) -> Any:
  """Converts numpy / jax scalars and arrays (anything with `tolist`) for `json.dumps`."""
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as JSON (indent=2, trailing newline) atomically; numpy/jax values become lists."""
  text = json.dumps(obj, indent=2, default=_json_default) + "\n"
  with atomic_path(path) as tmp:
    tmp.write_text(text, encoding="utf-8")


def to_uint8(image: Any) -> np.ndarray:
  """(H, W, 3) uint8 or float in [0, 1] (clipped) -> (H, W, 3) uint8. Raises ValueError on a bad shape."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return image
  if not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"expected a uint8 or floating-point image, got dtype {image.dtype}")
  return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
  """Pads an (H, W, 3) frame at the bottom / right by edge replication to even H and W."""
  h, w = frame.shape[:2]
  if h % 2 == 0 and w % 2 == 0:
    return frame
  return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(path: str | os.PathLike, frames: Iterable[Any], fps: float = 30.0) -> None:
  """Writes frames to an .mp4 (H.264) or .gif file atomically, streaming one frame at a time.

  Args:
    path: output file; its extension (.mp4 or .gif, case-insensitive) chooses the format.
    frames: iterable of (H, W, 3) uint8 or float-in-[0, 1] arrays, all of the same size; at least one.
    fps: frames per second.

  .mp4 uses libx264 with pixel format yuv420p (playable everywhere) and no macro-block resizing.
  yuv420p needs even sizes, so a frame with an odd height or width is padded by one row / column
  (replicating the edge): a 17x33 input gives an 18x34 video. GIF frame durations are rounded by the
  format to 10 ms. Raises `WonderlandError` for an unsupported extension, ValueError for bad frames.
  """
  path = Path(path)
  ext = path.suffix.lower()
  if ext not in VIDEO_EXTENSIONS:
    raise WonderlandError(f"{path}: unsupported video extension {path.suffix!r}; use one of {VIDEO_EXTENSIONS}")
  iterator = iter(frames)
  first = next(iterator, None)
  if first is None:
    raise ValueError(f"{path}: no frames to write")
  first = to_uint8(first)
  shape = first.shape

  def checked(frame: Any) -> np.ndarray:
    frame = to_uint8(frame)
    if frame.shape != shape:
      raise ValueError(f"{path}: all frames must have shape {shape}, got {frame.shape}")
    return frame

  count = 0
  with atomic_path(path) as tmp:
    try:
      if ext == ".mp4":
        count = _write_mp4(tmp, path, first, iterator, checked, fps, shape)
      else:
        with iio3.imopen(tmp, "w", plugin="pillow") as writer:
          for count, frame in enumerate(itertools.chain([first], map(checked, iterator)), 1):
            writer.write(frame, is_batch=False, duration=1000.0 / fps, loop=0)
    except (OSError, RuntimeError) as error:  # the encoder failed (disk full, killed ffmpeg, ...)
      raise OutputError(f"{path}: writing the video failed: {storage_reason(error)}") from error
  logger.debug("wrote %d frames to %s", count, path)


def _write_mp4(tmp, path: Path, first: np.ndarray, iterator, checked, fps: float, shape) -> int:
  """Encodes to `tmp` with ffmpeg and reads the result back: a video with fewer frames than were written (a full
  disk, a failed encoder whose exit status imageio does not report) is an `OutputError`, not a success."""
  import imageio_ffmpeg  # noqa: PLC0415 (imageio's ffmpeg backend; only for .mp4)
  if shape[0] % 2 or shape[1] % 2:
    logger.info("%s: padding odd frame size %dx%d to even for yuv420p", path, shape[0], shape[1])
  # closing(): imageio's v2 writer does not close on error, which would leave ffmpeg writing the staging file.
  writer = iio2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                           macro_block_size=1, ffmpeg_log_level="error")
  count = 0
  # ffmpeg starts with the first frame, by fork+exec: JAX's warning about forking does not apply.
  with contextlib.closing(writer), warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    for count, frame in enumerate(itertools.chain([first], map(checked, iterator)), 1):
      writer.append_data(_pad_to_even(frame))
  try:
    encoded, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
  except (OSError, RuntimeError) as error:
    logger.debug("reading back %s: %s", tmp, error)
    raise OutputError(f"{path}: the encoded video cannot be read back; is the disk full?") from error
  if encoded != count:
    raise OutputError(f"{path}: the encoder wrote {encoded} of {count} frames; is the disk full?")
  return count


def write_png(path: str | os.PathLike, image: Any) -> None:
  """Writes one (H, W, 3) uint8 or float-in-[0, 1] image to a .png file atomically."""
  image = to_uint8(image)
  with atomic_path(path) as tmp:
    iio3.imwrite(tmp, image, extension=".png")


def write_png_sequence(directory: str | os.PathLike, frames: Iterable[Any]) -> list[Path]:
  """Writes frames as `directory/frame_00000.png`, `frame_00001.png`, ... (each atomically).

  The directory is created if needed; existing files with other names are left alone. Returns the
  written paths in order.
  """
  directory = Path(directory)
  paths = []
  for i, frame in enumerate(frames):
    paths.append(directory / f"frame_{i:05d}.png")
    write_png(paths[-1], frame)
  return paths


def write_png_dir(directory: str | os.PathLike, frames: Iterable[Any]) -> list[Path]:
  """Writes `frames` as PNGs into `directory` all or nothing: into a hidden staging directory first, which
  is then renamed. `directory` must not exist or be empty (an InputFileError otherwise)."""
  directory = Path(directory)
  if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
    raise InputFileError(f"{directory}: exists and is not an empty directory")
  with atomic_directory(directory, manifest=False) as staging:
    names = [path.name for path in write_png_sequence(staging, frames)]
  return [directory / name for name in names]


def read_image(path: str | os.PathLike) -> np.ndarray:
  """Reads an image file as float32 (H, W, 3) RGB in [0, 1].

  Decoded by Pillow (PNG, JPEG, WebP, BMP, TIFF, GIF, ...). Alpha is dropped (not composited),
  grayscale is repeated to 3 channels, integer data is scaled by its dtype's maximum (8- or 16-bit);
  for multi-frame files the first frame is read. Raises `InputFileError` naming the file when it is
  missing or cannot be decoded as an image.
  """
  path = Path(path)
  if not path.is_file():
    raise InputFileError(f"{path}: image file not found")
  try:
    image = np.asarray(iio3.imread(path, index=0, plugin="pillow"))
  except Exception as e:  # Decoders raise many types here (OSError, ValueError, struct.error, ...).
    raise InputFileError(f"{path}: cannot read image: {e}") from e
  if image.ndim == 2:
    image = image[:, :, None]
  if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
    raise InputFileError(f"{path}: unsupported image shape {image.shape}; expected (H, W[, C]) with C <= 4")
  if image.shape[2] in (1, 2):  # gray or gray + alpha
    image = np.repeat(image[:, :, :1], 3, axis=2)
  image = image[:, :, :3]
  if np.issubdtype(image.dtype, np.integer):
    image = image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
  elif image.dtype == np.bool_:
    image = image.astype(np.float32)
  else:
    image = np.clip(image.astype(np.float32), 0.0, 1.0)
  return image
