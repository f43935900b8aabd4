"""`render.views_per_pass`: the LaLRM's supervision views rendered in rematerialised groups give the same images
and gradients as all views at once (the high-res step's memory saving), and a group size that does not divide
the views is one line naming the flag."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.helpers.gaussians import random_camera, to_gaussians
from tests.helpers.splat_reference import random_scene
from wonderland_jax.errors import WonderlandError
from wonderland_jax.train.lalrm import render_targets


def _config(per_pass):
  return ml_collections.ConfigDict(dict(render=dict(capacity=4096, tile_size=16, background=(0.1, 0.2, 0.3),
                                                    views_per_pass=per_pass)))


def test_views_rendered_in_groups_equal_all_at_once():
  rng = np.random.default_rng(0)
  gaussians = jax.tree.map(lambda x: x[None], to_gaussians(random_scene(rng, 60)))  # a batch of one scene
  cameras = [random_camera(rng, 32, 24) for _ in range(4)]
  viewmats = jnp.stack([c.viewmat for c in cameras])[None]
  intrinsics = jnp.stack([c.K for c in cameras])[None]

  def loss(means, per_pass):
    scene = gaussians.replace(means=means)
    images = render_targets(scene, viewmats, intrinsics, 24, 32, capacity=4096, config=_config(per_pass))
    return jnp.mean(images ** 2), images

  results = {n: jax.jit(jax.value_and_grad(lambda m, n=n: loss(m, n), has_aux=True))(gaussians.means)
             for n in (0, 2)}
  (value, images), grads = results[0]
  (grouped_value, grouped_images), grouped_grads = results[2]
  assert images.shape == (1, 4, 24, 32, 3) and float(jnp.abs(grads).max()) > 0
  np.testing.assert_allclose(grouped_images, images, atol=1e-6)
  np.testing.assert_allclose(grouped_value, value, rtol=1e-6)
  np.testing.assert_allclose(grouped_grads, grads, rtol=1e-5, atol=1e-7)
  with pytest.raises(WonderlandError, match="--config.render.views_per_pass=3 must divide the 4"):
    render_targets(gaussians, viewmats, intrinsics, 24, 32, capacity=4096, config=_config(3))
