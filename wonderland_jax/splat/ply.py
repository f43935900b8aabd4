"""Reading and writing `Gaussians` as .ply files in the standard 3DGS layout.

The layout is that of the Inria 3DGS code, read by SuperSplat, gsplat and most viewers: one
`vertex` element, binary little-endian, float32 properties in this order:

  x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3K-1} opacity scale_0 scale_1 scale_2
  rot_0 rot_1 rot_2 rot_3

Stored values versus `Gaussians` fields:
  x, y, z:   means.
  nx..nz:    zero (unused).
  f_dc_c:    (colors[:, c] - 0.5) / SH_C0, i.e. the degree-0 SH coefficient.
  f_rest_i:  sh, channel-major: i = c * K + k for channel c in (R, G, B) and coefficient k, i.e. the
             (N, K, 3) `sh` transposed to (N, 3, K) and flattened. K = 0, 3, 8 or 15.
  opacity:   logit(opacities), with opacities first clipped to [1e-6, 1 - 1e-6] so it is finite.
  scale_j:   log(scales), with scales first clipped to >= 1e-12.
  rot_0..3:  quats in wxyz order (rot_0 = w), stored as given (not normalised).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import plyfile

from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_path
from wonderland_jax.splat.gaussians import SH_REST_TO_DEGREE, Gaussians
from wonderland_jax.splat.sh import SH_C0

logger = logging.getLogger(__name__)

OPACITY_EPS = 1e-6
MIN_SCALE = 1e-12

_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
_F_REST = re.compile(r"f_rest_(\d+)")


def save_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
  """Writes `gaussians` to `path` in the 3DGS .ply layout (see the module docstring), atomically.

  Raises `WonderlandError` if `gaussians` is malformed or its colours are not RGB (C != 3).
  """
  gaussians.validate()
  if gaussians.colors.shape[1] != 3:
    raise WonderlandError(f"{path}: save_ply needs RGB colors of shape (N, 3), got {gaussians.colors.shape}")
  g = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float64), gaussians)
  n = g.means.shape[0]
  sh = np.zeros((n, 0, 3)) if g.sh is None else g.sh
  opacity = np.clip(g.opacities, OPACITY_EPS, 1.0 - OPACITY_EPS)
  columns = [
    g.means,
    np.zeros((n, 3)),
    (g.colors - 0.5) / SH_C0,
    sh.transpose(0, 2, 1).reshape(n, 3 * sh.shape[1]),
    (np.log(opacity) - np.log1p(-opacity))[:, None],
    np.log(np.maximum(g.scales, MIN_SCALE)),
    g.quats,
  ]
  names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
           + [f"f_rest_{i}" for i in range(3 * sh.shape[1])]
           + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
  values = np.concatenate(columns, axis=1).astype(np.float32)
  vertices = np.empty(n, dtype=[(name, "<f4") for name in names])
  for i, name in enumerate(names):
    vertices[name] = values[:, i]
  data = plyfile.PlyData([plyfile.PlyElement.describe(vertices, "vertex")], text=False, byte_order="<")
  with atomic_path(path) as tmp:
    data.write(str(tmp))
  logger.debug("wrote %d Gaussians (sh degree %d) to %s", n, gaussians.sh_degree, path)


def load_ply(path: str | os.PathLike) -> Gaussians:
  """Reads a 3DGS .ply file into float32 `Gaussians` (the inverse of `save_ply`).

  Accepts ascii or binary files, any property order and any numeric property types; properties
  other than those listed in the module docstring (normals, SuperSplat extras, ...) are ignored.
  `sh` is None when the file has no `f_rest_*` properties; otherwise there must be 9, 24 or 45 of
  them, numbered 0.. without gaps. Raises `InputFileError` naming the file (and the missing or
  malformed properties) for a missing, non-ply, truncated or incomplete file.
  """
  path = Path(path)
  if not path.is_file():
    raise InputFileError(f"{path}: .ply file not found")
  try:
    data = plyfile.PlyData.read(str(path))
  except (plyfile.PlyParseError, ValueError, EOFError, OSError) as e:
    raise InputFileError(f"{path}: not a readable .ply file: {e}") from e
  if "vertex" not in data:
    raise InputFileError(f"{path}: .ply file has no 'vertex' element")
  vertex = data["vertex"]
  names = [p.name for p in vertex.properties]
  missing = [name for name in _REQUIRED if name not in names]
  if missing:
    raise InputFileError(f"{path}: .ply vertex element lacks the properties {', '.join(missing)}")
  rest = sorted((int(m.group(1)), name) for name in names if (m := _F_REST.fullmatch(name)))
  if [i for i, _ in rest] != list(range(len(rest))) or len(rest) % 3 or len(rest) // 3 not in SH_REST_TO_DEGREE:
    raise InputFileError(f"{path}: expected f_rest_0..f_rest_{{n-1}} with n in (0, 9, 24, 45), "
                         f"got {[name for _, name in rest]}")

  def stack(keys) -> np.ndarray:
    return np.stack([np.asarray(vertex[k], np.float64) for k in keys], axis=1)

  n = vertex.count
  k = len(rest) // 3
  opacity = stack(["opacity"])[:, 0]
  sh = None
  if k:
    sh = jnp.asarray(stack([name for _, name in rest]).reshape(n, 3, k).transpose(0, 2, 1), jnp.float32)
  gaussians = Gaussians(
    means=jnp.asarray(stack(["x", "y", "z"]), jnp.float32),
    quats=jnp.asarray(stack(["rot_0", "rot_1", "rot_2", "rot_3"]), jnp.float32),
    scales=jnp.asarray(np.maximum(np.exp(stack(["scale_0", "scale_1", "scale_2"])), MIN_SCALE), jnp.float32),
    opacities=jnp.asarray(0.5 * (1.0 + np.tanh(0.5 * opacity)), jnp.float32),  # overflow-free sigmoid
    colors=jnp.asarray(0.5 + SH_C0 * stack(["f_dc_0", "f_dc_1", "f_dc_2"]), jnp.float32),
    sh=sh,
  )
  try:
    return gaussians.check_values(str(path))
  except WonderlandError as error:
    raise InputFileError(str(error)) from None
