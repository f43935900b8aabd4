import jax.numpy as jnp
import numpy as np

from tests.helpers import splat_reference as reference
from tests.helpers.gaussians import random_camera, to_gaussians
from wonderland_jax.splat.project import project
from wonderland_jax.splat.tiles import count_pairs, intersect_tiles


def test_bins_equal_brute_force_sorted_lists():
  rng = np.random.default_rng(5)
  gaussians = to_gaussians(reference.random_scene(rng, 80))
  camera = random_camera(rng, 70, 45)
  projected = project(gaussians, camera, tile_size=16)
  grid_width, grid_height = 5, 3
  needed = int(count_pairs(projected))
  bins = intersect_tiles(projected, grid_width, grid_height, needed + 17)
  assert int(bins.num_pairs) == needed
  rects, depths, visible = (np.asarray(x) for x in (projected.tile_rects, projected.depths, projected.visible))
  for tile in range(grid_width * grid_height):
    tile_x, tile_y = tile % grid_width, tile // grid_width
    members = [i for i in range(80) if visible[i] and rects[i, 0] <= tile_x < rects[i, 2]
               and rects[i, 1] <= tile_y < rects[i, 3]]
    members.sort(key=lambda i: (depths[i], i))
    start, end = int(bins.tile_start[tile]), int(bins.tile_end[tile])
    np.testing.assert_array_equal(np.asarray(bins.gaussian_ids[start:end]), members)
  assert int(bins.tile_end[-1]) == needed  # padding sorts after the last tile


def test_empty_scene_and_all_culled():
  rng = np.random.default_rng(6)
  scene = reference.random_scene(rng, 10)
  scene["means"][:, 2] = -5.0  # everything behind the camera
  projected = project(to_gaussians(scene), random_camera(rng, 32, 32))
  assert int(count_pairs(projected)) == 0
  bins = intersect_tiles(projected, 2, 2, 8)
  np.testing.assert_array_equal(bins.tile_start, bins.tile_end)
  assert not np.any(np.asarray(projected.visible))
  assert np.all(np.asarray(projected.radii) == 0)
  assert jnp.all(projected.tile_rects == 0)
