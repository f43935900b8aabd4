"""Rendering a batch of cameras sharded over the 8 test devices equals rendering it on one."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from tests.helpers import splat_reference as reference
from tests.helpers.gaussians import to_gaussians
from wonderland_jax.camera import make_trajectory
from wonderland_jax.splat import capacity_for, count_intersections, rasterize


def test_cameras_sharded_over_a_data_axis():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  scene = reference.random_scene(np.random.default_rng(0), 100)
  scene["means"][:, 2] += 2.0
  gaussians = to_gaussians(scene)
  cameras = make_trajectory("orbit", 8, radius=6.0, degrees=90.0, width=24, height=16)
  capacity = capacity_for(int(count_intersections(gaussians, cameras)))
  sharded_cameras = jax.device_put(cameras, NamedSharding(mesh, PartitionSpec("data")))
  render = jax.jit(lambda g, c: rasterize(g, c, capacity=capacity).image,
                   out_shardings=NamedSharding(mesh, PartitionSpec("data")))
  images = render(gaussians, sharded_cameras)
  assert images.shape == (8, 16, 24, 3)
  assert len(images.sharding.device_set) == 8
  expected = rasterize(gaussians, cameras).image
  assert float(jnp.abs(expected).max()) > 0.1
  np.testing.assert_allclose(images, expected, atol=1e-6)
