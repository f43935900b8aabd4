"""The tile-based differentiable Gaussian rasterizer (pure JAX: CPU, GPU and TPU from one code path).

    out = rasterize(gaussians, camera)          # out.image (H, W, C), out.alpha (H, W), out.depth (H, W)
    out = rasterize(gaussians, cameras)         # a batch of cameras: (F, H, W, C), ...

Stages (each in its own module, each testable alone): `project` (EWA splatting), `intersect_tiles`
(static-shape Gaussian-tile pairs sorted by tile and depth), `composite` (front-to-back blending with a
custom VJP). `depth` is the alpha-weighted sum of camera z (not normalised by alpha).

The pair buffer has a static capacity. Called eagerly (also under `jax.grad`), `rasterize` counts the
pairs first and picks a power-of-two capacity that fits, so recompiles stay few. Under `jax.jit` /
`jax.vmap` pass `capacity=` yourself (size it outside with `count_intersections`); a scene that needs more
raises a `CapacityError` at run time instead of dropping splats.
"""

from __future__ import annotations

import dataclasses
import functools

import einops
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.camera import Camera
from wonderland_jax.errors import CapacityError, WonderlandError
from wonderland_jax.parallel.targets import compile_platform
from wonderland_jax.splat.composite import CompositeLayout, composite
from wonderland_jax.splat.gaussians import Gaussians
from wonderland_jax.splat.project import RadiusRule, project
from wonderland_jax.splat.sh import view_dependent_colors
from wonderland_jax.splat.tiles import count_pairs, intersect_tiles

MIN_CAPACITY = 256


@flax.struct.dataclass
class RenderOutput:
  """image (..., H, W, C); alpha (..., H, W) = 1 - final transmittance; depth (..., H, W) = sum_i w_i z_i."""

  image: jax.Array
  alpha: jax.Array
  depth: jax.Array


@dataclasses.dataclass(frozen=True)
class RasterSettings:
  """Static rasterizer settings; see `rasterize` for their meaning."""

  tile_size: int = 16
  near: float = 0.01
  far: float = 1e10
  eps2d: float = 0.3
  antialiased: bool = False
  alpha_max: float = 0.99
  radius_rule: RadiusRule = "max_eigen"
  chunk_size: int | None = None
  tiles_per_batch: int | None = None

  def layout(self, camera: Camera) -> CompositeLayout:
    """Work sizes default by backend: on CPU small batches of tiles (sorted by work) balance load best
    (docs/benchmarks.md); on accelerators all tiles at once, up to ~4M alphas per block, for parallelism."""
    grid_width = -(-camera.width // self.tile_size)
    grid_height = -(-camera.height // self.tile_size)
    on_cpu = compile_platform() == "cpu"
    chunk_size = self.chunk_size or (16 if on_cpu else 32)
    tiles_per_batch = self.tiles_per_batch or (64 if on_cpu else
                                               max(1, (1 << 22) // (self.tile_size ** 2 * chunk_size)))
    return CompositeLayout(grid_width, grid_height, self.tile_size, chunk_size, tiles_per_batch, self.alpha_max)

  def project(self, gaussians: Gaussians, camera: Camera):
    return project(gaussians, camera, tile_size=self.tile_size, near=self.near, far=self.far,
                   eps2d=self.eps2d, antialiased=self.antialiased, radius_rule=self.radius_rule)


def rasterize(gaussians: Gaussians, camera: Camera, *, background=None, tile_size: int = 16,
              near: float = 0.01, far: float = 1e10, antialiased: bool = False, alpha_max: float = 0.99,
              radius_rule: RadiusRule = "max_eigen", eps2d: float = 0.3, capacity: int | None = None,
              chunk_size: int | None = None, tiles_per_batch: int | None = None) -> RenderOutput:
  """Renders `gaussians` from `camera` (one camera, or a batch with a leading axis).

  Args:
    gaussians: the scene (linear scales, opacities in [0, 1]); with `sh`, colours are view-dependent.
    camera: `Camera`, OpenCV convention; batched cameras render a batch of images.
    background: (C,) colour added as T * background (default zeros).
    tile_size: tile edge in pixels (16 as in the Inria and gsplat rasterizers).
    near, far: Gaussians whose camera z is outside (near, far) are culled.
    antialiased: multiply opacities by sqrt(det(cov2d) / det(cov2d + eps2d I)) (Mip-Splatting / gsplat).
    alpha_max: per-splat alpha cap (0.99 Inria, 0.999 gsplat).
    radius_rule: "max_eigen" (Inria: 3-sigma of the larger eigenvalue, square) or "per_axis" (gsplat 1.x:
      3-sigma per axis); decides which tiles a Gaussian is binned to.
    eps2d: screen-space dilation of the 2D covariance, pixels^2.
    capacity: size of the Gaussian-tile pair buffer (required under jit/vmap; see module docstring).
    chunk_size, tiles_per_batch: compositing work sizes (speed/memory trade-off, no effect on results);
      None picks per-backend defaults (see `RasterSettings.layout`).
  """
  settings = RasterSettings(tile_size, near, far, eps2d, antialiased, alpha_max, radius_rule, chunk_size,
                            tiles_per_batch)
  gaussians.validate()
  if camera.viewmat.ndim not in (2, 3):
    raise WonderlandError(f"camera.viewmat must be (4, 4) or (F, 4, 4), got {camera.viewmat.shape}")
  num_channels = gaussians.colors.shape[1]
  if background is None:
    background = jnp.zeros((num_channels,), gaussians.colors.dtype)
  background = jnp.asarray(background, gaussians.colors.dtype)
  if background.shape != (num_channels,):
    raise WonderlandError(f"background must have shape ({num_channels},), got {background.shape}")
  if capacity is None:
    capacity = _auto_capacity(gaussians, camera, settings)
  capacity = int(capacity)
  if capacity < 1:
    raise WonderlandError(f"capacity must be >= 1, got {capacity}")
  return _rasterize(gaussians, camera, background, settings, capacity)


def count_intersections(gaussians: Gaussians, camera: Camera, *, tile_size: int = 16, near: float = 0.01,
                        far: float = 1e10, eps2d: float = 0.3, radius_rule: RadiusRule = "max_eigen"):
  """Number of Gaussian-tile pairs `rasterize` needs (the max over a batch of cameras); jittable."""
  settings = RasterSettings(tile_size=tile_size, near=near, far=far, eps2d=eps2d, radius_rule=radius_rule)
  return _count(gaussians, camera, settings)


def capacity_for(num_pairs: int) -> int:
  """A power-of-two buffer size >= `num_pairs` (few distinct sizes -> few recompiles)."""
  return max(MIN_CAPACITY, 1 << int(max(num_pairs, 1) - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("settings",))
def _count(gaussians: Gaussians, camera: Camera, settings: RasterSettings):
  count_one = lambda cam: count_pairs(settings.project(gaussians, cam))
  if camera.viewmat.ndim == 3:
    return jnp.max(jax.vmap(count_one)(camera))
  return count_one(camera)


def _auto_capacity(gaussians: Gaussians, camera: Camera, settings: RasterSettings) -> int:
  count = _count(jax.lax.stop_gradient(gaussians), jax.lax.stop_gradient(camera), settings)
  try:
    return capacity_for(int(count))
  except jax.errors.ConcretizationTypeError:
    raise CapacityError(
        "rasterize() inside jax.jit / jax.vmap needs an explicit capacity=: size it outside the transform "
        "with wonderland_jax.splat.capacity_for(count_intersections(gaussians, camera)), or pass "
        "cameras as one batched Camera to rasterize() directly.") from None


def _check_capacity(num_pairs, capacity):
  needed = int(np.max(num_pairs))
  if needed > capacity:
    raise CapacityError(f"the rasterizer's pair buffer is too small: the scene needs {needed} Gaussian-tile "
                        f"pairs but capacity={capacity}; pass capacity >= {capacity_for(needed)} (see "
                        "wonderland_jax.splat.count_intersections)")


@functools.partial(jax.jit, static_argnames=("settings", "capacity"))
def _rasterize(gaussians, camera, background, settings: RasterSettings, capacity: int) -> RenderOutput:
  if camera.viewmat.ndim == 3:
    return jax.vmap(lambda cam: _rasterize_one(gaussians, cam, background, settings, capacity))(camera)
  return _rasterize_one(gaussians, camera, background, settings, capacity)


def _rasterize_one(gaussians, camera, background, settings: RasterSettings, capacity: int) -> RenderOutput:
  layout = settings.layout(camera)
  projected = settings.project(gaussians, camera)
  colors = gaussians.colors
  if gaussians.sh is not None:
    colors = view_dependent_colors(colors, gaussians.sh, gaussians.means, camera.position.astype(colors.dtype))
  features = jnp.concatenate([colors, projected.depths[:, None].astype(colors.dtype)], -1)
  bins = intersect_tiles(projected, layout.grid_width, layout.grid_height, capacity)
  if compile_platform() == jax.default_backend():  # a deviceless compile for another platform never runs
    jax.debug.callback(_check_capacity, bins.num_pairs, capacity)
  accum, transmittance = composite(projected.means2d, projected.conics, projected.opacities, features,
                                   bins.gaussian_ids, bins.tile_start, bins.tile_end, layout)
  to_image = lambda x: einops.rearrange(
      x, "(gh gw) (th tw) ... -> (gh th) (gw tw) ...", gh=layout.grid_height, gw=layout.grid_width,
      th=layout.tile_size)[: camera.height, : camera.width]
  accum, transmittance = to_image(accum), to_image(transmittance)
  image = accum[..., :-1] + transmittance[..., None] * background
  return RenderOutput(image=image, alpha=1.0 - transmittance, depth=accum[..., -1])
