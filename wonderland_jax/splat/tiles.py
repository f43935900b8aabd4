"""Stage 2 of the rasterizer: Gaussian-tile intersection with static shapes.

Every visible Gaussian emits one (tile, depth, gaussian) pair per tile of its rectangle. The pairs live
in a buffer of static `capacity`; they are sorted by tile, then depth (ties by Gaussian index), and each
tile gets the range [start, end) of its pairs. A buffer that is too small is an error, never a silent
drop: callers size it with `count_intersections` (see rasterize.py).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from wonderland_jax.splat.project import Projected


@flax.struct.dataclass
class TileBins:
  """Sorted pairs and per-tile ranges.

  gaussian_ids: (capacity,) int32 Gaussian index of each pair, sorted by (tile, depth); padding at the end.
  tile_start, tile_end: (num_tiles,) int32 range of each tile's pairs (row-major tiles, x fastest).
  num_pairs: () int32 number of pairs the scene needs (may exceed capacity: then the bins are invalid).
  """

  gaussian_ids: jax.Array
  tile_start: jax.Array
  tile_end: jax.Array
  num_pairs: jax.Array


def count_pairs(projected: Projected) -> jax.Array:
  """() int32: the number of Gaussian-tile pairs `projected` needs."""
  return jnp.sum(projected.tiles_per_gaussian)


def intersect_tiles(projected: Projected, grid_width: int, grid_height: int, capacity: int) -> TileBins:
  """Bins the projected Gaussians into a `grid_width` x `grid_height` tile grid (see module docstring)."""
  num_gaussians = projected.depths.shape[0]
  num_tiles = grid_width * grid_height
  rects = projected.tile_rects
  counts = projected.tiles_per_gaussian
  ends = jnp.cumsum(counts)
  num_pairs = ends[-1] if num_gaussians else jnp.zeros((), jnp.int32)

  pair = jnp.arange(capacity, dtype=jnp.int32)
  owner = jnp.minimum(jnp.searchsorted(ends, pair, side="right"), max(num_gaussians - 1, 0))
  valid = pair < num_pairs
  local = pair - (ends[owner] - counts[owner])
  rect_width = jnp.maximum(rects[owner, 2] - rects[owner, 0], 1)
  tile_x = rects[owner, 0] + local % rect_width
  tile_y = rects[owner, 1] + local // rect_width
  tile_id = jnp.where(valid, tile_y * grid_width + tile_x, num_tiles)
  depth = jnp.where(valid, jax.lax.stop_gradient(projected.depths)[owner], jnp.inf)
  sorted_tile, _, sorted_owner = jax.lax.sort((tile_id, depth, owner), num_keys=2, is_stable=True)

  tiles = jnp.arange(num_tiles, dtype=jnp.int32)
  tile_start = jnp.searchsorted(sorted_tile, tiles, side="left").astype(jnp.int32)
  tile_end = jnp.searchsorted(sorted_tile, tiles, side="right").astype(jnp.int32)
  return TileBins(gaussian_ids=sorted_owner.astype(jnp.int32), tile_start=tile_start, tile_end=tile_end,
                  num_pairs=num_pairs.astype(jnp.int32))
