"""Tests for the `Camera` pytree: constructors, intrinsics, resizing, batching, rigid inverse."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from wonderland_jax.camera import Camera, intrinsics_matrix, rigid_inverse
from wonderland_jax.errors import WonderlandError


def random_c2w(num: int, seed: int) -> np.ndarray:
  """(num, 4, 4) random rigid camera->world matrices."""
  rng = np.random.default_rng(seed)
  c2w = np.tile(np.eye(4), (num, 1, 1))
  c2w[:, :3, :3] = Rotation.random(num, random_state=seed).as_matrix()
  c2w[:, :3, 3] = rng.normal(size=(num, 3))
  return c2w.astype(np.float32)


K_EXAMPLE = np.array([[100.0, 0.0, 32.0], [0.0, 90.0, 24.0], [0.0, 0.0, 1.0]], np.float32)


def test_from_c2w_and_from_viewmat_agree():
  c2w = random_c2w(4, seed=0)
  from_c2w = Camera.from_c2w(c2w, K_EXAMPLE, 64, 48)
  from_viewmat = Camera.from_viewmat(np.linalg.inv(c2w), K_EXAMPLE, 64, 48)
  np.testing.assert_allclose(from_c2w.viewmat, from_viewmat.viewmat, atol=1e-5)
  np.testing.assert_allclose(from_viewmat.c2w, c2w, atol=1e-5)
  np.testing.assert_allclose(from_c2w.position, c2w[:, :3, 3], atol=1e-6)
  assert from_c2w.K.shape == (4, 3, 3)  # broadcast over the batch
  assert (from_c2w.width, from_c2w.height) == (64, 48)


def test_from_c2w_accepts_3x4():
  c2w = random_c2w(2, seed=1)
  camera = Camera.from_c2w(c2w[:, :3], K_EXAMPLE, 64, 48)
  np.testing.assert_allclose(camera.c2w, c2w, atol=1e-5)


def test_from_fov_focal_length():
  camera = Camera.from_fov(np.eye(4), 200, 100, fov_x_deg=90.0)
  np.testing.assert_allclose(camera.K, [[100.0, 0, 100.0], [0, 100.0, 50.0], [0, 0, 1]], rtol=1e-6)
  camera = Camera.from_fov(np.eye(4), 200, 100, fov_y_deg=60.0)
  focal = 50.0 / np.tan(np.deg2rad(30.0))
  np.testing.assert_allclose(camera.K, [[focal, 0, 100.0], [0, focal, 50.0], [0, 0, 1]], rtol=1e-6)
  with pytest.raises(WonderlandError, match="exactly one"):
    Camera.from_fov(np.eye(4), 200, 100)


def test_normalized_intrinsics():
  camera = Camera.from_normalized_intrinsics(np.eye(4), 0.5, 0.8, 0.5, 0.25, 640, 480)
  np.testing.assert_allclose(camera.K, [[320.0, 0, 320.0], [0, 384.0, 120.0], [0, 0, 1]], rtol=1e-6)


def test_intrinsics_matrix_broadcasts():
  K = intrinsics_matrix(np.array([1.0, 2.0]), 3.0, 4.0, 5.0)
  assert K.shape == (2, 3, 3)
  np.testing.assert_allclose(K[1], [[2.0, 0, 4.0], [0, 3.0, 5.0], [0, 0, 1]])


def test_resized_scales_intrinsics():
  camera = Camera.from_c2w(random_c2w(3, seed=2), K_EXAMPLE, 64, 48).resized(32, 96)
  assert (camera.width, camera.height) == (32, 96)
  np.testing.assert_allclose(camera.K[0], [[50.0, 0, 16.0], [0, 180.0, 48.0], [0, 0, 1]], rtol=1e-6)


def test_indexing_a_batch():
  c2w = random_c2w(5, seed=3)
  cameras = Camera.from_c2w(c2w, K_EXAMPLE, 64, 48)
  assert len(cameras) == 5
  single = cameras[2]
  assert single.batch_shape == ()
  np.testing.assert_allclose(single.c2w, c2w[2], atol=1e-5)
  assert len(cameras[1:4]) == 3
  with pytest.raises(TypeError):
    len(single)


def test_camera_is_a_pytree_with_static_size():
  cameras = Camera.from_c2w(random_c2w(2, seed=4), K_EXAMPLE, 64, 48)
  leaves, treedef = jax.tree_util.tree_flatten(cameras)
  assert len(leaves) == 2
  rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
  assert (rebuilt.width, rebuilt.height) == (64, 48)
  scaled = jax.jit(lambda camera: camera.resized(32, 24))(cameras)
  np.testing.assert_allclose(scaled.K[:, 0, 0], 50.0)


def test_rigid_inverse_matches_numpy():
  c2w = random_c2w(6, seed=5)
  np.testing.assert_allclose(rigid_inverse(c2w), np.linalg.inv(c2w), atol=1e-5)


def test_bad_shapes_raise():
  with pytest.raises(WonderlandError, match="c2w"):
    Camera.from_c2w(np.eye(3), K_EXAMPLE, 64, 48)
  with pytest.raises(WonderlandError, match="K"):
    Camera.from_c2w(np.eye(4), np.eye(4), 64, 48)
