"""Per-pixel camera rays and the Plücker-ray camera embedding.

Conventions (see `camera.py`): OpenCV camera axes (x right, y down, z forward); pixel (row i, column j)
has its centre at (j + 0.5, i + 0.5) in pixel coordinates. A ray is (origin o, unit direction d).

The Plücker embedding of a ray is the 6-vector (o x d, d) (moment first), as in CameraCtrl and GS-LRM.
`plucker_rays` expresses all rays of a clip in the first camera's frame, so the embedding does not depend
on the world frame the poses happen to be given in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wonderland_jax.camera.camera import Camera
from wonderland_jax.errors import WonderlandError


def pixel_centers(width: int, height: int, dtype=jnp.float32) -> jax.Array:
  """(height, width, 2) pixel-centre coordinates (u, v) = (j + 0.5, i + 0.5) for row i, column j."""
  u = jnp.arange(width, dtype=dtype) + 0.5
  v = jnp.arange(height, dtype=dtype) + 0.5
  vv, uu = jnp.meshgrid(v, u, indexing="ij")
  return jnp.stack([uu, vv], -1)


def ray_bundle(camera: Camera) -> tuple[jax.Array, jax.Array]:
  """World-space rays through every pixel centre of `camera`.

  Args:
    camera: a single camera, or a batch with batch shape B (then every output gains leading axes B).

  Returns:
    origins: (*B, H, W, 3) the camera centre, repeated per pixel, world coordinates.
    directions: (*B, H, W, 3) unit-norm ray directions through the pixel centres, world coordinates.
  """
  uv = pixel_centers(camera.width, camera.height, camera.K.dtype)
  uv1 = jnp.concatenate([uv, jnp.ones_like(uv[..., :1])], -1)  # (H, W, 3) homogeneous pixels
  K_inv = jnp.linalg.inv(camera.K)  # (*B, 3, 3)
  c2w = camera.c2w  # (*B, 4, 4)
  camera_to_world_rotation = c2w[..., :3, :3]
  # Pixel -> camera-space direction (z = 1) -> world-space direction.
  pixel_to_world = camera_to_world_rotation @ K_inv  # (*B, 3, 3)
  directions = jnp.einsum("...ij,hwj->...hwi", pixel_to_world, uv1)
  directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
  origins = jnp.broadcast_to(c2w[..., None, None, :3, 3], directions.shape)
  return origins, directions


def relative_to_first(cameras: Camera) -> Camera:
  """The (F,) batch of cameras re-based so camera 0 sits at the origin with identity rotation.

  c2w_rel_i = viewmat_0 @ c2w_i, i.e. viewmat_rel_i = viewmat_i @ c2w_0. Intrinsics are unchanged.
  """
  if len(cameras.batch_shape) != 1:
    raise WonderlandError(f"expected a 1-D batch of cameras (F,), got batch shape {cameras.batch_shape}")
  first_c2w = cameras[0].c2w
  return Camera(cameras.viewmat @ first_c2w, cameras.K, cameras.width, cameras.height)


def plucker_rays(cameras: Camera, height: int | None = None, width: int | None = None) -> jax.Array:
  """Plücker embedding (o x d, d) of every pixel's ray, in the first camera's frame.

  Args:
    cameras: a batch of F cameras (batch shape (F,)).
    height, width: output resolution (static); default the cameras' own size. When it differs, the
      intrinsics are scaled with `Camera.resized` (same field of view, same principal point fraction).

  Returns:
    (F, H, W, 6): channels 0:3 the moment o x d, channels 3:6 the unit direction d, where o is camera i's
    centre and d the direction through pixel centre (j + 0.5, i + 0.5), both in camera 0's OpenCV frame.
    Hence frame 0 has o = 0 and zero moment everywhere.
  """
  height = cameras.height if height is None else int(height)
  width = cameras.width if width is None else int(width)
  if (width, height) != (cameras.width, cameras.height):
    cameras = cameras.resized(width, height)
  origins, directions = ray_bundle(relative_to_first(cameras))
  return jnp.concatenate([jnp.cross(origins, directions), directions], -1)
