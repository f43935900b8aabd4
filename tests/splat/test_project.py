import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import splat_reference as reference
from tests.helpers.gaussians import random_camera, to_gaussians
from wonderland_jax.splat.project import covariance_3d, project, quat_to_rotmat


def test_quaternion_rotation_is_orthonormal_and_wxyz():
  rng = np.random.default_rng(0)
  rotations = np.asarray(quat_to_rotmat(jnp.asarray(rng.normal(size=(8, 4)))))
  np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (8, 3, 3)),
                             atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rotations), 1, atol=1e-5)
  # 90 degrees about z (w = cos 45, z = sin 45) maps x to y.
  quarter_turn = quat_to_rotmat(jnp.asarray([[np.sqrt(0.5), 0, 0, np.sqrt(0.5)]]))[0]
  np.testing.assert_allclose(quarter_turn @ jnp.asarray([1.0, 0, 0]), [0, 1, 0], atol=1e-6)
  np.testing.assert_allclose(quat_to_rotmat(jnp.zeros((1, 4)))[0], np.eye(3))
  cov = covariance_3d(jnp.asarray([[1.0, 0, 0, 0]]), jnp.asarray([[1.0, 2.0, 3.0]]))[0]
  np.testing.assert_allclose(cov, np.diag([1, 4, 9]))


@pytest.mark.parametrize("radius_rule", ["max_eigen", "per_axis"])
def test_projection_matches_reference(radius_rule):
  rng = np.random.default_rng(3)
  scene = reference.random_scene(rng, 60)
  with jax.enable_x64(True):
    gaussians = to_gaussians(scene, jnp.float64)
    camera = random_camera(rng, 50, 40, jnp.float64)
    ours = project(gaussians, camera, tile_size=16, radius_rule=radius_rule)
    viewmat, K = np.asarray(camera.viewmat), np.asarray(camera.K)
    num_visible = 0
    for i in range(60):
      expected = reference.project_one(scene["means"][i], scene["quats"][i], scene["scales"][i], viewmat, K,
                                       50, 40)
      rect = None if expected is None else reference.tile_rect(expected["mean2d"], expected["cov"], 50, 40, 16,
                                                               radius_rule)
      if expected is None or rect[0][1] <= rect[0][0] or rect[1][1] <= rect[1][0]:
        assert not ours.visible[i]
        continue
      num_visible += 1
      assert ours.visible[i]
      np.testing.assert_allclose(ours.means2d[i], expected["mean2d"], rtol=1e-12)
      conic = np.linalg.inv(expected["cov"])
      np.testing.assert_allclose(ours.conics[i], [conic[0, 0], conic[0, 1], conic[1, 1]], rtol=1e-9, atol=1e-12)
      np.testing.assert_array_equal(ours.tile_rects[i], [rect[0][0], rect[1][0], rect[0][1], rect[1][1]])
    assert 20 < num_visible < 60
