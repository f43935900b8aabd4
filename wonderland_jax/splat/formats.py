"""Reading scene files people share: `load_scene` picks the reader by a file's header and suffix.

Read:
  .ply     3DGS (Inria) layout or SuperSplat / splat-transform compressed .ply: `ply.load_ply`.
  .splat   antimatter15/splat: `load_splat`, the layout below.
Refused by name, with the command that converts them to .ply: .spz (Niantic), .ksplat (GaussianSplats3D),
.sog (PlayCanvas SOG), .lcc (XGrids); any other suffix is refused listing the formats read.

The antimatter15 .splat layout: no header, 32 bytes a Gaussian, little-endian:

  bytes  0..11  float32 x, y, z                    means
  bytes 12..23  float32 scale_0..2                 scales, linear (not log)
  bytes 24..27  uint8 r, g, b, a                   colors = rgb / 255 (0.5 + SH_C0 * f_dc, clipped to [0, 1]);
                                                   opacities = a / 255 (not a logit)
  bytes 28..31  uint8 rot_0..3                     (q / |q|) * 128 + 128 (clipped to 255), wxyz as in the .ply;
                                                   read as (v - 128) / 128, then normalised
Writers sort the Gaussians by decreasing volume * opacity; the order does not matter here. No SH (`sh` None).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.splat.gaussians import Gaussians
from wonderland_jax.splat.ply import MIN_SCALE, load_ply

logger = logging.getLogger(__name__)

SPLAT_RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])
CONVERTER = "npx @playcanvas/splat-transform"
UNSUPPORTED = {  # suffix -> what the format is; splat-transform reads them all
  ".spz": "Niantic SPZ",
  ".ksplat": "GaussianSplats3D .ksplat",
  ".sog": "PlayCanvas SOG",
  ".lcc": "XGrids LCC",
}
READ = ".ply (3DGS or SuperSplat compressed) and .splat (antimatter15)"


def load_scene(path: str | os.PathLike) -> Gaussians:
  """Reads a scene file into float32 `Gaussians`: a .ply (or any file beginning with the line 'ply') with
  `load_ply`, a .splat with `load_splat`. Raises `InputFileError` naming the file for a missing file, a
  format not read (with the command that converts it) or a malformed file."""
  path = Path(path)
  if not path.is_file():
    raise InputFileError(f"{path}: scene file not found")
  suffix = path.suffix.lower()
  if suffix in UNSUPPORTED:
    raise InputFileError(f"{path}: {suffix} ({UNSUPPORTED[suffix]}) is not supported; convert it to .ply with "
                         f"`{CONVERTER} {path.name} {path.stem}.ply`")
  try:
    with open(path, "rb") as f:
      is_ply = f.read(4) in (b"ply\n", b"ply\r")
  except OSError as e:
    raise InputFileError(f"{path}: cannot read the file: {e}") from e
  if is_ply or suffix == ".ply":
    return load_ply(path)
  if suffix == ".splat":
    return load_splat(path)
  raise InputFileError(f"{path}: unknown scene format {suffix or '(no suffix)'!r}; reads {READ}, and "
                       f"`{CONVERTER}` converts others to .ply")


def load_splat(path: str | os.PathLike) -> Gaussians:
  """Reads an antimatter15 .splat file (layout in the module docstring) into float32 `Gaussians`, sh None.

  Zero scales become `ply.MIN_SCALE` and an all-128 (zero) rotation the identity. Raises `InputFileError`
  naming the file for a missing or empty file, a size not a multiple of 32 bytes, or non-finite or
  negative values.
  """
  path = Path(path)
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise InputFileError(f"{path}: .splat file not found") from None
  except OSError as e:
    raise InputFileError(f"{path}: cannot read the file: {e}") from e
  if len(raw) % SPLAT_RECORD.itemsize:
    raise InputFileError(f"{path}: not an antimatter15 .splat file: its size, {len(raw)} bytes, is not a "
                         f"multiple of {SPLAT_RECORD.itemsize}")
  records = np.frombuffer(raw, SPLAT_RECORD)
  quats = (records["rotation"].astype(np.float64) - 128.0) / 128.0
  norms = np.linalg.norm(quats, axis=1, keepdims=True)
  quats = np.where(norms > 0, quats / np.where(norms > 0, norms, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
  scales = records["scale"].astype(np.float64)
  rgba = records["rgba"].astype(np.float64) / 255.0
  gaussians = Gaussians(
    means=jnp.asarray(records["position"], jnp.float32),
    quats=jnp.asarray(quats, jnp.float32),
    scales=jnp.asarray(np.where(scales == 0, MIN_SCALE, scales), jnp.float32),
    opacities=jnp.asarray(rgba[:, 3], jnp.float32),
    colors=jnp.asarray(rgba[:, :3], jnp.float32),
  )
  try:
    gaussians.check_values(str(path))
  except WonderlandError as error:
    raise InputFileError(str(error)) from None
  logger.debug("read %d Gaussians from %s", gaussians.num, path)
  return gaussians
