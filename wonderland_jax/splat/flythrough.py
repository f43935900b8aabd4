"""Rendering a scene along a camera path: framing a scene, fitting presets to it, rendering frames."""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from wonderland_jax.camera import Camera, look_at, make_trajectory
from wonderland_jax.errors import WonderlandError
from wonderland_jax.progress import progress
from wonderland_jax.splat.gaussians import Gaussians
from wonderland_jax.splat.rasterize import capacity_for, count_intersections, rasterize


def scene_bounds(gaussians: Gaussians, quantile: float = 0.9) -> tuple[np.ndarray, float]:
  """A robust centre (3,) (median of the visible means) and radius (the `quantile` of distances to it)."""
  means = np.asarray(gaussians.means, np.float64)
  keep = np.asarray(gaussians.opacities) > 0.05
  means = means[keep] if keep.sum() >= 1 else means
  if means.shape[0] == 0:
    raise WonderlandError("the scene has no Gaussians")
  center = np.median(means, axis=0)
  radius = float(np.quantile(np.linalg.norm(means - center, axis=1), quantile))
  return center, max(radius, 1e-6)


# Distances of each preset in units of the framing distance (camera to scene centre).
_FITTED_PARAMETERS = {
    "orbit": lambda d: dict(radius=d, degrees=360.0),
    "dolly": lambda d: dict(distance=0.5 * d),
    "zoom-out": lambda d: dict(distance=0.5 * d),
    "pan-left": lambda d: {},
    "pan-right": lambda d: {},
    "spiral": lambda d: dict(radius=0.1 * d, distance=0.3 * d, focus_distance=d),
}


def fitted_trajectory(gaussians: Gaussians, name: str, num_frames: int, width: int, height: int, *,
                      fov_deg: float = 60.0, **overrides) -> Camera:
  """Preset `name` framed on the scene: the start camera looks along world +z at the scene's centre from
  far enough to see its bulk, and the preset's distances scale with that distance (`overrides` win)."""
  center, radius = scene_bounds(gaussians)
  half_fov = np.deg2rad(0.5 * fov_deg) * min(1.0, height / width)
  distance = 1.1 * radius / np.tan(half_fov) + radius
  start = look_at(center - np.array([0.0, 0.0, distance]), center)
  parameters = _FITTED_PARAMETERS.get(name, lambda d: {})(distance) | overrides
  return make_trajectory(name, num_frames, start_c2w=start, width=width, height=height, fov_deg=fov_deg,
                         **parameters)


def render_frames(gaussians: Gaussians, cameras: Camera, *, background=None,
                  desc: str = "rendering") -> Iterator[np.ndarray]:
  """Yields float32 (H, W, C) images for each camera of a batch, one compiled program for all frames."""
  capacity = capacity_for(int(count_intersections(gaussians, cameras)))
  render_one = jax.jit(lambda g, cam: rasterize(g, cam, background=background, capacity=capacity).image)
  for index in progress(range(len(cameras)), desc=desc):
    yield np.asarray(render_one(gaussians, cameras[index]))
