"""A procedural Gaussian scene for the demo: a checkered floor and three shaded spheres."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from wonderland_jax.splat.gaussians import Gaussians


def _sphere(rng, center, radius, color, count):
  directions = rng.normal(size=(count, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  shading = 0.55 + 0.45 * np.clip(directions @ np.array([0.3, -0.8, -0.5]), 0, 1)  # light from above
  colors = np.clip(np.asarray(color)[None] * shading[:, None], 0, 1)
  return center + radius * directions, np.full((count, 3), radius * 0.18), colors


def procedural_scene(seed: int = 0) -> Gaussians:
  """About 1.3k Gaussians around the origin, OpenCV-style world (y points down, the floor is at y = 0.5)."""
  rng = np.random.default_rng(seed)
  grid = np.linspace(-1.2, 1.2, 20)
  floor_x, floor_z = (a.ravel() for a in np.meshgrid(grid, grid))
  checker = ((np.floor(floor_x * 2.5) + np.floor(floor_z * 2.5)) % 2)[:, None]
  floor = (np.stack([floor_x, np.full_like(floor_x, 0.5), floor_z], -1),
           np.tile([0.075, 0.004, 0.075], (floor_x.size, 1)),
           checker * [0.9, 0.85, 0.75] + (1 - checker) * [0.25, 0.3, 0.4])
  parts = [floor,
           _sphere(rng, [-0.55, 0.15, 0.1], 0.35, [0.9, 0.25, 0.2], 300),
           _sphere(rng, [0.45, 0.2, -0.3], 0.3, [0.2, 0.7, 0.3], 300),
           _sphere(rng, [0.1, 0.25, 0.6], 0.25, [0.25, 0.35, 0.95], 300)]
  means, scales, colors = (np.concatenate(field, 0) for field in zip(*parts))
  num = means.shape[0]
  return Gaussians(means=jnp.asarray(means, jnp.float32), quats=jnp.tile(jnp.asarray([1.0, 0, 0, 0]), (num, 1)),
                   scales=jnp.asarray(scales, jnp.float32), opacities=jnp.full((num,), 0.95, jnp.float32),
                   colors=jnp.asarray(colors, jnp.float32))
