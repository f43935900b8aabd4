"""Tests for per-pixel rays and the Plücker embedding."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from wonderland_jax.camera import Camera, plucker_rays, ray_bundle
from wonderland_jax.errors import WonderlandError

WIDTH, HEIGHT = 12, 8


def random_cameras(num: int, seed: int) -> tuple[Camera, np.ndarray, np.ndarray]:
  """Batch of random cameras plus their float64 c2w (num, 4, 4) and K (num, 3, 3)."""
  rng = np.random.default_rng(seed)
  c2w = np.tile(np.eye(4), (num, 1, 1))
  c2w[:, :3, :3] = Rotation.random(num, random_state=seed).as_matrix()
  c2w[:, :3, 3] = rng.normal(size=(num, 3))
  K = np.tile(np.eye(3), (num, 1, 1))
  K[:, 0, 0], K[:, 1, 1] = rng.uniform(8, 20, num), rng.uniform(8, 20, num)
  K[:, 0, 2], K[:, 1, 2] = rng.uniform(4, 8, num), rng.uniform(3, 5, num)
  return Camera.from_c2w(c2w.astype(np.float32), K.astype(np.float32), WIDTH, HEIGHT), c2w, K


def reference_ray(c2w: np.ndarray, K: np.ndarray, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
  """World ray (origin, unit direction) through pixel coordinates (u, v), computed explicitly."""
  x_camera = (u - K[0, 2]) / K[0, 0]
  y_camera = (v - K[1, 2]) / K[1, 1]
  direction = c2w[:3, :3] @ np.array([x_camera, y_camera, 1.0])
  return c2w[:3, 3], direction / np.linalg.norm(direction)


def reference_plucker(c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
  """Slow per-pixel (F, H, W, 6) Plücker rays in camera 0's frame."""
  relative = np.linalg.inv(c2w[0]) @ c2w
  out = np.zeros((len(c2w), height, width, 6))
  for frame in range(len(c2w)):
    for row in range(height):
      for column in range(width):
        origin, direction = reference_ray(relative[frame], K[frame], column + 0.5, row + 0.5)
        out[frame, row, column] = np.concatenate([np.cross(origin, direction), direction])
  return out


def test_plucker_matches_explicit_per_pixel_computation():
  cameras, c2w, K = random_cameras(3, seed=0)
  rays = plucker_rays(cameras)
  assert rays.shape == (3, HEIGHT, WIDTH, 6)
  np.testing.assert_allclose(rays, reference_plucker(c2w, K, WIDTH, HEIGHT), atol=2e-5)


def test_plucker_under_jit():
  cameras, c2w, K = random_cameras(2, seed=1)
  jitted = jax.jit(plucker_rays, static_argnames=("height", "width"))
  np.testing.assert_allclose(jitted(cameras, height=4, width=6), plucker_rays(cameras, 4, 6), atol=1e-6)


def test_directions_unit_norm_and_first_frame_at_origin():
  cameras, _, _ = random_cameras(4, seed=2)
  rays = np.asarray(plucker_rays(cameras))
  np.testing.assert_allclose(np.linalg.norm(rays[..., 3:], axis=-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(rays[0, ..., :3], 0.0, atol=1e-6)  # o = 0 so o x d = 0
  # Frame 0's rays are in its own camera frame: a centred camera's ray through (W/2, H/2) would be +z, so
  # the four central pixels' directions average to +z.
  centred = Camera.from_fov(np.eye(4)[None], 4, 2, fov_x_deg=60.0)
  mean_direction = np.asarray(plucker_rays(centred))[0, :, 1:3, 3:].mean((0, 1))
  np.testing.assert_allclose(mean_direction / np.linalg.norm(mean_direction), [0, 0, 1], atol=1e-6)


def test_invariant_to_a_global_rigid_transform():
  cameras, c2w, K = random_cameras(3, seed=3)
  transform = np.eye(4)
  transform[:3, :3] = Rotation.random(random_state=7).as_matrix()
  transform[:3, 3] = [3.0, -1.0, 2.0]
  moved = Camera.from_c2w((transform @ c2w).astype(np.float32), K.astype(np.float32), WIDTH, HEIGHT)
  np.testing.assert_allclose(plucker_rays(moved), plucker_rays(cameras), atol=5e-5)


def test_pixel_ray_passes_through_the_point_it_images():
  cameras, c2w, K = random_cameras(3, seed=4)
  rays = np.asarray(plucker_rays(cameras))
  relative = np.linalg.inv(c2w[0]) @ c2w
  rng = np.random.default_rng(4)
  for frame in range(3):
    row, column, depth = rng.integers(HEIGHT), rng.integers(WIDTH), rng.uniform(1, 5)
    # A 3D point in front of the camera that projects exactly onto the pixel's centre...
    point_camera = depth * np.linalg.inv(K[frame]) @ np.array([column + 0.5, row + 0.5, 1.0])
    point_world = c2w[frame] @ np.append(point_camera, 1.0)
    projected = K[frame] @ (np.linalg.inv(c2w[frame]) @ point_world)[:3]
    np.testing.assert_allclose(projected[:2] / projected[2], [column + 0.5, row + 0.5], atol=1e-9)
    # ...lies on the pixel's Plücker line: p x d = m (in camera 0's frame).
    point_relative = (np.linalg.inv(c2w[0]) @ point_world)[:3]
    moment, direction = rays[frame, row, column, :3], rays[frame, row, column, 3:]
    np.testing.assert_allclose(np.cross(point_relative, direction), moment, atol=1e-4)
    # and in front of the camera along d.
    assert np.dot(point_relative - relative[frame, :3, 3], direction) > 0


def test_ray_bundle_world_coordinates():
  cameras, c2w, K = random_cameras(2, seed=5)
  origins, directions = ray_bundle(cameras[1])
  assert origins.shape == directions.shape == (HEIGHT, WIDTH, 3)
  origin, direction = reference_ray(c2w[1], K[1], 3 + 0.5, 5 + 0.5)
  np.testing.assert_allclose(origins[5, 3], origin, atol=1e-6)
  np.testing.assert_allclose(directions[5, 3], direction, atol=1e-5)


def test_resizing_scales_intrinsics():
  cameras, c2w, K = random_cameras(2, seed=6)
  half = np.asarray(plucker_rays(cameras, height=HEIGHT // 2, width=WIDTH // 2))
  assert half.shape == (2, HEIGHT // 2, WIDTH // 2, 6)
  np.testing.assert_allclose(half, plucker_rays(cameras.resized(WIDTH // 2, HEIGHT // 2)), atol=1e-6)
  # Low-res pixel centre (j + 0.5, i + 0.5) is the point (2j + 1, 2i + 1) of the full-res image plane.
  relative = np.linalg.inv(c2w[0]) @ c2w
  for row, column in [(0, 0), (3, 5), (1, 2)]:
    origin, direction = reference_ray(relative[1], K[1], 2 * column + 1.0, 2 * row + 1.0)
    np.testing.assert_allclose(half[1, row, column, 3:], direction, atol=1e-5)
    np.testing.assert_allclose(half[1, row, column, :3], np.cross(origin, direction), atol=1e-5)


def test_rejects_unbatched_cameras():
  cameras, _, _ = random_cameras(2, seed=7)
  with pytest.raises(WonderlandError, match="1-D batch"):
    plucker_rays(cameras[0])
