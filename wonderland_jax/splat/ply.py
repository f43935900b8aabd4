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

`load_ply` also reads the compressed .ply of PlayCanvas SuperSplat / splat-transform (recognised by its
`packed_*` vertex properties), binary little-endian, 16 bytes a Gaussian plus optional uint8 SH:

  element chunk ceil(N / 256): float32 min_x min_y min_z max_x max_y max_z, min_scale_x..z, max_scale_x..z
             (log scales), and optionally min_r min_g min_b max_r max_g max_b (colours 0.5 + SH_C0 * f_dc);
             Gaussian i belongs to chunk i // 256 and each quantity is lerp(min, max, t) of an unorm t.
  element vertex N: uint32 packed_position, packed_rotation, packed_scale, packed_color.
    packed_position, packed_scale: 11-10-11 bits, x in bits 21..31, y in 11..20, z in 0..10.
    packed_color: 8-8-8-8 bits, r in 24..31, g, b, then the opacity (not a logit, not lerped) in 0..7;
      r, g, b are the colours themselves when the chunk has no min_r.. properties.
    packed_rotation: "smallest three" of the normalised (rot_0..rot_3) with its largest component made
      positive: that component's index in bits 30..31, the other three in index order in bits 20..29,
      10..19 and 0..9, each as the 10-bit unorm of q / sqrt(2) + 0.5; the largest is sqrt(1 - sum q^2).
  element sh N (optional): uchar f_rest_0 .. f_rest_{3K-1} (channel-major as above), the unorm
      (0 -> 0, 255 -> 1, else (v + 0.5) / 256) of f_rest / 8 + 0.5.
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
_PACKED = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
CHUNK_SIZE = 256  # Gaussians a chunk of the compressed layout


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
  """Reads a 3DGS .ply file, or a SuperSplat compressed .ply, into float32 `Gaussians` (the inverse of
  `save_ply`; see the module docstring for both layouts).

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
    with open(path, "rb") as f:
      magic = f.read(4)
  except OSError as e:
    raise InputFileError(f"{path}: cannot read the file: {e}") from e
  if magic[:3] != b"ply" or magic[3:] not in (b"\n", b"\r"):
    hint = "" if path.suffix.lower() == ".ply" else "; splat.load_scene reads .splat and names other formats"
    raise InputFileError(f"{path}: not a .ply file (it does not begin with the line 'ply'){hint}")
  try:
    data = plyfile.PlyData.read(str(path))
  except (plyfile.PlyParseError, ValueError, EOFError, OSError) as e:
    raise InputFileError(f"{path}: not a readable .ply file: {e}") from e
  if "vertex" not in data:
    raise InputFileError(f"{path}: .ply file has no 'vertex' element")
  names = [p.name for p in data["vertex"].properties]
  compressed = any(name in names for name in _PACKED)
  gaussians = _decompress(data, path) if compressed else _read_standard(data["vertex"], path)
  try:
    return gaussians.check_values(str(path))
  except WonderlandError as error:
    raise InputFileError(str(error)) from None


def _read_standard(vertex: plyfile.PlyElement, path: Path) -> Gaussians:
  """The `Gaussians` of a `vertex` element in the 3DGS layout."""
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
  return Gaussians(
    means=jnp.asarray(stack(["x", "y", "z"]), jnp.float32),
    quats=jnp.asarray(stack(["rot_0", "rot_1", "rot_2", "rot_3"]), jnp.float32),
    scales=jnp.asarray(np.maximum(np.exp(stack(["scale_0", "scale_1", "scale_2"])), MIN_SCALE), jnp.float32),
    opacities=jnp.asarray(0.5 * (1.0 + np.tanh(0.5 * opacity)), jnp.float32),  # overflow-free sigmoid
    colors=jnp.asarray(0.5 + SH_C0 * stack(["f_dc_0", "f_dc_1", "f_dc_2"]), jnp.float32),
    sh=sh,
  )


def _decompress(data: plyfile.PlyData, path: Path) -> Gaussians:
  """The `Gaussians` of a SuperSplat compressed .ply (`chunk`, `vertex` with `packed_*`, optional `sh`)."""
  vertex = data["vertex"]
  vertex_names = {p.name for p in vertex.properties}
  missing = [name for name in _PACKED if name not in vertex_names]
  if missing:
    raise InputFileError(f"{path}: compressed .ply vertex element lacks the properties {', '.join(missing)}")
  not_integer = [name for name in _PACKED if vertex[name].dtype.kind not in "iu"]
  if not_integer:
    raise InputFileError(f"{path}: compressed .ply properties {', '.join(not_integer)} must be uint32")
  if "chunk" not in data:
    raise InputFileError(f"{path}: compressed .ply (packed_* properties) has no 'chunk' element")
  chunk = data["chunk"]
  chunk_names = {p.name for p in chunk.properties}
  n = vertex.count
  if chunk.count != -(-n // CHUNK_SIZE):
    raise InputFileError(f"{path}: compressed .ply has {chunk.count} chunks for {n} Gaussians, expected "
                         f"{-(-n // CHUNK_SIZE)} (one per {CHUNK_SIZE})")
  has_colour_range = any(f"{end}_{c}" in chunk_names for end in ("min", "max") for c in "rgb")  # all or none
  quantities = ["x", "y", "z", "scale_x", "scale_y", "scale_z"] + (["r", "g", "b"] if has_colour_range else [])
  missing = [f"{end}_{q}" for q in quantities for end in ("min", "max") if f"{end}_{q}" not in chunk_names]
  if missing:
    raise InputFileError(f"{path}: compressed .ply chunk element lacks the properties {', '.join(missing)}")
  of_chunk = np.arange(n) // CHUNK_SIZE

  def lerp(names: tuple[str, ...], t: np.ndarray) -> np.ndarray:
    low = np.stack([np.asarray(chunk[f"min_{q}"], np.float64)[of_chunk] for q in names], 1)
    high = np.stack([np.asarray(chunk[f"max_{q}"], np.float64)[of_chunk] for q in names], 1)
    return low * (1.0 - t) + high * t

  packed = {name: np.asarray(vertex[name]).astype(np.uint32) for name in _PACKED}
  rgba = _unpack_unorms(packed["packed_color"], (8, 8, 8, 8))
  colors = lerp(("r", "g", "b"), rgba[:, :3]) if has_colour_range else rgba[:, :3]
  log_scales = lerp(("scale_x", "scale_y", "scale_z"), _unpack_unorms(packed["packed_scale"], (11, 10, 11)))
  return Gaussians(
    means=jnp.asarray(lerp(("x", "y", "z"), _unpack_unorms(packed["packed_position"], (11, 10, 11))), jnp.float32),
    quats=jnp.asarray(_unpack_smallest_three(packed["packed_rotation"]), jnp.float32),
    scales=jnp.asarray(np.maximum(np.exp(log_scales), MIN_SCALE), jnp.float32),
    opacities=jnp.asarray(rgba[:, 3], jnp.float32),
    colors=jnp.asarray(colors, jnp.float32),
    sh=_compressed_sh(data, n, path),
  )


def _unpack_unorms(packed: np.ndarray, bits: tuple[int, ...]) -> np.ndarray:
  """(N,) uint32 -> (N, len(bits)) float64 in [0, 1]: fields of the given widths, the first in the top bits."""
  fields, shift = [], sum(bits)
  for width in bits:
    shift -= width
    fields.append(((packed >> np.uint32(shift)) & np.uint32((1 << width) - 1)) / ((1 << width) - 1))
  return np.stack(fields, 1)


def _unpack_smallest_three(packed: np.ndarray) -> np.ndarray:
  """(N,) uint32 2-10-10-10 "smallest three" quaternions -> (N, 4) unit quaternions in the file's order."""
  smallest = (_unpack_unorms(packed, (2, 10, 10, 10))[:, 1:] - 0.5) * np.sqrt(2.0)
  largest = np.sqrt(np.maximum(0.0, 1.0 - (smallest**2).sum(1)))
  is_largest = np.arange(4) == (packed >> np.uint32(30)).astype(np.int64)[:, None]  # (N, 4)
  quats = np.empty((packed.shape[0], 4))
  quats[is_largest] = largest
  quats[~is_largest] = smallest.reshape(-1)  # row by row, the three others in index order
  return quats


def _compressed_sh(data: plyfile.PlyData, n: int, path: Path) -> jax.Array | None:
  """(N, K, 3) `sh` from the optional uint8 `sh` element of a compressed .ply, or None without one."""
  if "sh" not in data:
    return None
  element = data["sh"]
  names = [p.name for p in element.properties]
  if element.count != n or len(names) not in (9, 24, 45) or names != [f"f_rest_{i}" for i in range(len(names))]:
    raise InputFileError(f"{path}: compressed .ply sh element must have {n} rows of f_rest_0..f_rest_{{n-1}} "
                         f"with n in (9, 24, 45), got {element.count} rows of {names}")
  quantised = np.stack([np.asarray(element[name], np.float64) for name in names], 1)
  unorm = np.where(quantised <= 0, 0.0, np.where(quantised >= 255, 1.0, (quantised + 0.5) / 256))
  k = len(names) // 3
  return jnp.asarray(((unorm - 0.5) * 8.0).reshape(n, 3, k).transpose(0, 2, 1), jnp.float32)
