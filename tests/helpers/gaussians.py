"""Gaussians and cameras for the rasterizer tests (from the float64 reference's scene dicts)."""

import jax.numpy as jnp
import numpy as np

from wonderland_jax.camera import Camera
from wonderland_jax.splat import Gaussians


def to_gaussians(scene: dict, dtype=jnp.float32) -> Gaussians:
  sh = scene.get("sh")
  return Gaussians(means=jnp.asarray(scene["means"], dtype), quats=jnp.asarray(scene["quats"], dtype),
                   scales=jnp.asarray(scene["scales"], dtype), opacities=jnp.asarray(scene["opacities"], dtype),
                   colors=jnp.asarray(scene["colors"], dtype),
                   sh=None if sh is None else jnp.asarray(sh, dtype))


def random_camera(rng, width, height, dtype=jnp.float32) -> Camera:
  """A camera near the origin looking roughly down +z, off-centre principal point."""
  angle = rng.normal(size=3) * 0.05
  skew = np.array([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]], [-angle[1], angle[0], 0]])
  rotation = np.linalg.qr(np.eye(3) + skew)[0]
  rotation *= np.sign(np.diag(rotation))
  c2w = np.eye(4)
  c2w[:3, :3], c2w[:3, 3] = rotation, rng.normal(size=3) * 0.1
  focal = rng.uniform(0.8, 1.2) * width
  K = np.array([[focal, 0, width * rng.uniform(0.4, 0.6)], [0, focal * rng.uniform(0.95, 1.05),
                                                             height * rng.uniform(0.4, 0.6)], [0, 0, 1]])
  return Camera.from_c2w(jnp.asarray(c2w, dtype), jnp.asarray(K, dtype), width, height)
