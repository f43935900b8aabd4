"""Stage 1 of the rasterizer: EWA projection of 3D Gaussians to 2D screen-space Gaussians.

Follows the Inria 3DGS rasterizer: camera-space means, 3D covariance R S S^T R^T, the perspective
Jacobian evaluated at the mean with x/z and y/z clamped to 1.3x the field of view (gsplat's form, which
allows an off-centre principal point), a 0.3 pixel dilation of the 2D covariance (with the opacity
compensation sqrt(det / det_dilated) when `antialiased`), and a screen-space bounding radius of 3 sigma.
"""

from __future__ import annotations

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from wonderland_jax.camera import Camera
from wonderland_jax.splat.gaussians import Gaussians
from wonderland_jax.splat.sh import safe_normalize

RadiusRule = Literal["max_eigen", "per_axis"]


@flax.struct.dataclass
class Projected:
  """Screen-space Gaussians for one camera (N of them, invisible ones flagged).

  means2d: (N, 2) pixels, (x, y), pixel centres at +0.5.   conics: (N, 3) inverse 2D covariance (a, b, c).
  depths: (N,) camera z.   opacities: (N,) after antialiasing compensation.   radii: (N, 2) pixels (x, y).
  tile_rects: (N, 4) int32 tile ranges [x0, y0, x1, y1) (empty for invisible Gaussians).
  visible: (N,) bool.
  """

  means2d: jax.Array
  conics: jax.Array
  depths: jax.Array
  opacities: jax.Array
  radii: jax.Array
  tile_rects: jax.Array
  visible: jax.Array

  @property
  def tiles_per_gaussian(self) -> jax.Array:
    rects = self.tile_rects
    return (rects[:, 2] - rects[:, 0]) * (rects[:, 3] - rects[:, 1])


def quat_to_rotmat(quats: jax.Array) -> jax.Array:
  """(N, 4) wxyz quaternions (any norm; zero -> identity) -> (N, 3, 3) rotation matrices."""
  w, x, y, z = jnp.moveaxis(safe_normalize(quats), -1, 0)
  return jnp.stack([
      jnp.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      jnp.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      jnp.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def covariance_3d(quats: jax.Array, scales: jax.Array) -> jax.Array:
  """(N, 3, 3) world covariances R diag(scales^2) R^T."""
  rotation_scale = quat_to_rotmat(quats) * scales[:, None, :]
  return rotation_scale @ jnp.swapaxes(rotation_scale, -1, -2)


def _safe_sqrt(x: jax.Array) -> jax.Array:
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def project(gaussians: Gaussians, camera: Camera, *, tile_size: int = 16, near: float = 0.01,
            far: float = 1e10, eps2d: float = 0.3, antialiased: bool = False,
            radius_rule: RadiusRule = "max_eigen", radius_sigmas: float = 3.0) -> Projected:
  """Projects `gaussians` into one (unbatched) `camera`.

  radius_rule: "max_eigen" (Inria): a square of half-size ceil(sigmas * sqrt(largest eigenvalue));
    "per_axis" (gsplat 1.x): half-sizes ceil(sigmas * sqrt(cov_xx)), ceil(sigmas * sqrt(cov_yy)).
  A Gaussian is binned to every tile that its bounding square [mean - r, mean + r] overlaps; it is
  invisible when its depth is outside (near, far), its 2D covariance is degenerate, or it touches no tile.
  """
  dtype = gaussians.means.dtype
  viewmat = camera.viewmat.astype(dtype)
  K = camera.K.astype(dtype)
  rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
  means_cam = gaussians.means @ rotation.T + translation
  x, y, z = means_cam[:, 0], means_cam[:, 1], means_cam[:, 2]
  in_depth = (z > near) & (z < far)
  z = jnp.where(in_depth, z, 1.0)  # keeps culled Gaussians' arithmetic (and gradients) finite

  fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
  tan_fov_x, tan_fov_y = 0.5 * camera.width / fx, 0.5 * camera.height / fy
  clamped_x = z * jnp.clip(x / z, -(cx / fx + 0.3 * tan_fov_x), (camera.width - cx) / fx + 0.3 * tan_fov_x)
  clamped_y = z * jnp.clip(y / z, -(cy / fy + 0.3 * tan_fov_y), (camera.height - cy) / fy + 0.3 * tan_fov_y)
  zeros = jnp.zeros_like(z)
  jacobian = jnp.stack([
      jnp.stack([fx / z, zeros, -fx * clamped_x / (z * z)], -1),
      jnp.stack([zeros, fy / z, -fy * clamped_y / (z * z)], -1),
  ], -2)  # (N, 2, 3)
  transform = jacobian @ rotation
  cov2d = transform @ covariance_3d(gaussians.quats, gaussians.scales) @ jnp.swapaxes(transform, -1, -2)
  det_raw = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
  cov_xx, cov_xy, cov_yy = cov2d[:, 0, 0] + eps2d, 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0]), cov2d[:, 1, 1] + eps2d
  det = cov_xx * cov_yy - cov_xy * cov_xy
  valid_cov = det > 0
  safe_det = jnp.where(valid_cov, det, 1.0)
  conics = jnp.stack([cov_yy / safe_det, -cov_xy / safe_det, cov_xx / safe_det], -1)
  opacities = gaussians.opacities
  if antialiased:
    opacities = opacities * _safe_sqrt(det_raw / safe_det)

  means2d = jnp.stack([fx * x / z + cx, fy * y / z + cy], -1)
  if radius_rule == "max_eigen":
    mid = 0.5 * (cov_xx + cov_yy)
    largest = mid + jnp.sqrt(jnp.maximum(0.1, mid * mid - det))
    radius = jnp.ceil(radius_sigmas * _safe_sqrt(largest))
    radii = jnp.stack([radius, radius], -1)
  elif radius_rule == "per_axis":
    radii = jnp.ceil(radius_sigmas * jnp.stack([_safe_sqrt(cov_xx), _safe_sqrt(cov_yy)], -1))
  else:
    raise ValueError(f"radius_rule must be 'max_eigen' or 'per_axis', got {radius_rule!r}")
  radii = jax.lax.stop_gradient(radii)

  grid = jnp.asarray([-(-camera.width // tile_size), -(-camera.height // tile_size)], dtype)
  center = jax.lax.stop_gradient(means2d)
  lower = jnp.clip(jnp.floor((center - radii) / tile_size), 0, grid)
  upper = jnp.clip(jnp.ceil((center + radii) / tile_size), 0, grid)
  lower = jnp.where(jnp.isfinite(lower), lower, 0)
  upper = jnp.where(jnp.isfinite(upper), upper, 0)
  visible = in_depth & valid_cov & jnp.all(upper > lower, -1)
  rects = jnp.where(visible[:, None], jnp.concatenate([lower, upper], -1), 0).astype(jnp.int32)
  return Projected(means2d=means2d, conics=conics, depths=means_cam[:, 2], opacities=opacities,
                   radii=jnp.where(visible[:, None], radii, 0).astype(jnp.int32), tile_rects=rects,
                   visible=visible)
