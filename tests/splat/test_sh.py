import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import splat_reference as reference
from wonderland_jax.splat.sh import safe_normalize, sh_basis, view_dependent_colors


def test_basis_matches_scipy_real_harmonics():
  rng = np.random.default_rng(0)
  directions = rng.normal(size=(20, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  with jax.enable_x64(True):
    ours = np.asarray(sh_basis(jnp.asarray(directions), 3))
  expected = np.stack([reference.real_sh_basis(d, 3) for d in directions])
  np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_view_dependent_colors_formula_and_clamp():
  rng = np.random.default_rng(1)
  means = rng.normal(size=(10, 3)) + [0, 0, 5]
  camera_position = np.array([0.3, -0.2, 0.1])
  colors = rng.uniform(size=(10, 3))
  sh = rng.normal(size=(10, 8, 3))
  ours = view_dependent_colors(jnp.asarray(colors), jnp.asarray(sh), jnp.asarray(means),
                               jnp.asarray(camera_position))
  for i in range(10):
    direction = (means[i] - camera_position) / np.linalg.norm(means[i] - camera_position)
    expected = np.maximum(colors[i] + reference.real_sh_basis(direction, 2)[1:] @ sh[i], 0)
    np.testing.assert_allclose(ours[i], expected, atol=1e-5)
  assert np.any(np.asarray(ours) == 0), "some colours should hit the clamp at 0"


def test_safe_normalize_zero_vector_is_finite():
  value, grad = jax.value_and_grad(lambda v: safe_normalize(v).sum())(jnp.zeros(3))
  assert value == 0 and np.all(np.isfinite(grad))
