"""The `Camera` pytree: pinhole cameras in OpenCV convention.

Conventions (used everywhere in the project):
  * `viewmat` is the 4x4 world->camera matrix; camera axes are OpenCV's: x right, y down, z forward.
  * `K` is the 3x3 intrinsic matrix in pixels; pixel (row i, column j) has its centre at (j + 0.5, i + 0.5).
  * `width`, `height` are static Python ints (part of the pytree's structure, not its leaves).
  * A batch of cameras is one `Camera` whose `viewmat` is (..., 4, 4) and `K` is (..., 3, 3).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.errors import WonderlandError


@flax.struct.dataclass
class Camera:
  """Pinhole camera(s). `viewmat`: (..., 4, 4) world->camera, OpenCV; `K`: (..., 3, 3) pixels."""

  viewmat: jax.Array
  K: jax.Array
  width: int = flax.struct.field(pytree_node=False)
  height: int = flax.struct.field(pytree_node=False)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self.viewmat.shape[:-2])

  def __len__(self) -> int:
    if not self.batch_shape:
      raise TypeError("len() of a single (unbatched) Camera")
    return self.batch_shape[0]

  def __getitem__(self, index) -> Camera:
    if not self.batch_shape:
      raise TypeError("cannot index a single (unbatched) Camera")
    return Camera(self.viewmat[index], self.K[index], self.width, self.height)

  @property
  def c2w(self) -> jax.Array:
    """(..., 4, 4) camera->world matrices (OpenCV axes)."""
    return rigid_inverse(jnp.asarray(self.viewmat))

  @property
  def position(self) -> jax.Array:
    """(..., 3) camera centres in world coordinates."""
    return self.c2w[..., :3, 3]

  def resized(self, width: int, height: int) -> Camera:
    """The same cameras with the image size changed to (width, height); intrinsics scale with it."""
    scale = jnp.asarray([width / self.width, height / self.height, 1.0], dtype=self.K.dtype)
    return Camera(self.viewmat, self.K * scale[:, None], int(width), int(height))

  @classmethod
  def from_c2w(cls, c2w, K, width: int, height: int) -> Camera:
    """From camera->world matrices `c2w` (..., 4, 4) or (..., 3, 4), OpenCV axes, and `K` (..., 3, 3)."""
    c2w = _as_4x4(jnp.asarray(c2w), "c2w")
    K = jnp.asarray(K, dtype=c2w.dtype)
    if K.shape[-2:] != (3, 3):
      raise WonderlandError(f"K must have shape (..., 3, 3), got {K.shape}")
    K = jnp.broadcast_to(K, c2w.shape[:-2] + (3, 3))
    return cls(rigid_inverse(c2w), K, int(width), int(height))

  @classmethod
  def from_viewmat(cls, viewmat, K, width: int, height: int) -> Camera:
    """From world->camera matrices (..., 4, 4) or (..., 3, 4) and `K` (..., 3, 3)."""
    viewmat = _as_4x4(jnp.asarray(viewmat), "viewmat")
    K = jnp.broadcast_to(jnp.asarray(K, dtype=viewmat.dtype), viewmat.shape[:-2] + (3, 3))
    return cls(viewmat, K, int(width), int(height))

  @classmethod
  def from_fov(cls, c2w, width: int, height: int, *, fov_x_deg: float | None = None,
               fov_y_deg: float | None = None) -> Camera:
    """From c2w and a field of view in degrees (give one of fov_x / fov_y; square pixels, centred)."""
    if (fov_x_deg is None) == (fov_y_deg is None):
      raise WonderlandError("from_fov: give exactly one of fov_x_deg and fov_y_deg")
    if fov_x_deg is not None:
      focal = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_x_deg))
    else:
      focal = 0.5 * height / np.tan(0.5 * np.deg2rad(fov_y_deg))
    return cls.from_c2w(c2w, intrinsics_matrix(focal, focal, 0.5 * width, 0.5 * height), width, height)

  @classmethod
  def from_normalized_intrinsics(cls, c2w, fx, fy, cx, cy, width: int, height: int) -> Camera:
    """From c2w and intrinsics normalised by the image size (fx, cx by width; fy, cy by height)."""
    K = intrinsics_matrix(jnp.asarray(fx) * width, jnp.asarray(fy) * height,
                          jnp.asarray(cx) * width, jnp.asarray(cy) * height)
    return cls.from_c2w(c2w, K, width, height)


def check_cameras(cameras: Camera, where: str) -> Camera:
  """Raises `WonderlandError` '{where}: ...' unless every camera is finite with positive focal lengths (a NaN pose
  or fx = 0 would render a blank image without an error). Returns `cameras`."""
  viewmat, K = np.asarray(cameras.viewmat, np.float64), np.asarray(cameras.K, np.float64)
  bad = ~(np.isfinite(viewmat).all(axis=(-2, -1)) & np.isfinite(K).all(axis=(-2, -1)))
  if bad.any():
    frames = np.flatnonzero(bad.reshape(-1))
    raise WonderlandError(f"{where}: non-finite camera values (NaN or inf) in camera(s) {frames[:10].tolist()}")
  focal = np.stack([K[..., 0, 0], K[..., 1, 1]], -1).reshape(-1, 2)
  if (focal <= 0).any():
    index = int(np.flatnonzero((focal <= 0).any(-1))[0])
    raise WonderlandError(f"{where}: camera {index} has focal lengths fx={focal[index, 0]:g}, fy={focal[index, 1]:g}; "
                          "both must be positive")
  return cameras


def intrinsics_matrix(fx, fy, cx, cy) -> jax.Array:
  """(..., 3, 3) pixel intrinsics from focal lengths and principal point (broadcasting)."""
  fx, fy, cx, cy = jnp.broadcast_arrays(*(jnp.asarray(v, dtype=jnp.result_type(float)) for v in (fx, fy, cx, cy)))
  zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
  rows = [jnp.stack([fx, zero, cx], -1), jnp.stack([zero, fy, cy], -1), jnp.stack([zero, zero, one], -1)]
  return jnp.stack(rows, -2)


def rigid_inverse(matrix):
  """Inverse of rigid (rotation + translation) transforms (..., 4, 4) or (..., 3, 4) (same shape out).

  numpy in, numpy out (its dtype kept: host-side pose code); anything else is computed with jax.numpy.
  """
  xp = np if isinstance(matrix, np.ndarray) else jnp
  rotation_t = xp.swapaxes(matrix[..., :3, :3], -1, -2)
  translation = -xp.einsum("...ij,...j->...i", rotation_t, matrix[..., :3, 3])
  top = xp.concatenate([rotation_t, translation[..., None]], -1)
  if matrix.shape[-2] == 3:
    return top
  bottom = xp.broadcast_to(xp.asarray([0, 0, 0, 1], matrix.dtype), matrix.shape[:-2] + (1, 4))
  return xp.concatenate([top, bottom], -2)


def _as_4x4(matrix: jax.Array, name: str) -> jax.Array:
  if matrix.shape[-2:] == (3, 4):
    bottom = jnp.broadcast_to(jnp.asarray([0, 0, 0, 1], matrix.dtype), matrix.shape[:-2] + (1, 4))
    matrix = jnp.concatenate([matrix, bottom], -2)
  if matrix.shape[-2:] != (4, 4):
    raise WonderlandError(f"{name} must have shape (..., 4, 4) or (..., 3, 4), got {matrix.shape}")
  if not jnp.issubdtype(matrix.dtype, jnp.floating):
    matrix = matrix.astype(jnp.result_type(float))
  return matrix
