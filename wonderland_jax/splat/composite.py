"""Stage 3 of the rasterizer: per-tile front-to-back alpha compositing with a memory-light custom VJP.

Each tile of `tile_size**2` pixels walks its depth-sorted Gaussians in chunks of `chunk_size`; all tiles of
a batch advance together (vectorised), batches of `tiles_per_batch` tiles run one after another. Per pixel
and Gaussian (Inria conventions):

  power = -0.5 (a dx^2 + c dy^2) - b dx dy     (dx = mean - pixel centre; skip if power > 0)
  alpha = min(alpha_max, opacity * exp(power))  (skip if alpha < alpha_min = 1/255)
  stop before the Gaussian that would bring the transmittance below transmittance_min = 1e-4.

The backward pass stores only per-pixel state (final transmittance and the index of the last contributing
pair, as the Inria rasterizer does) and walks the chunks back to front, recovering each chunk's incoming
transmittance by division (as gsplat does) and differentiating the chunk locally with `jax.vjp`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


class CompositeLayout(NamedTuple):
  """Static settings of the compositing stage (hashable: it is a jit/custom_vjp static argument)."""

  grid_width: int
  grid_height: int
  tile_size: int = 16
  chunk_size: int = 32
  tiles_per_batch: int = 512
  alpha_max: float = 0.99
  alpha_min: float = 1.0 / 255.0
  transmittance_min: float = 1e-4

  @property
  def num_tiles(self) -> int:
    return self.grid_width * self.grid_height

  @property
  def batch(self) -> int:
    return max(1, min(self.tiles_per_batch, self.num_tiles))

  @property
  def num_batches(self) -> int:
    return -(-self.num_tiles // self.batch)


def _pixel_centers(tile_index: jax.Array, layout: CompositeLayout, dtype) -> jax.Array:
  """(G, P, 2) pixel centres (x, y) of the tiles `tile_index` (G,); pixels row-major within a tile."""
  size = layout.tile_size
  local_y, local_x = jnp.divmod(jnp.arange(size * size), size)
  origin_x = (tile_index % layout.grid_width) * size
  origin_y = (tile_index // layout.grid_width) * size
  centers_x = origin_x[:, None] + local_x[None] + 0.5
  centers_y = origin_y[:, None] + local_y[None] + 0.5
  return jnp.stack([centers_x, centers_y], -1).astype(dtype)


def _alpha(means2d, conics, opacities, pixels, keep, layout: CompositeLayout):
  """(G, P, B) alphas of a chunk: means2d (G, B, 2), conics (G, B, 3), opacities (G, B), keep (G, P, B)."""
  delta = means2d[:, None, :, :] - pixels[:, :, None, :]
  dx, dy = delta[..., 0], delta[..., 1]
  a, b, c = (conics[:, None, :, i] for i in range(3))
  power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
  keep = keep & (power <= 0)
  alpha = jnp.minimum(layout.alpha_max, opacities[:, None, :] * jnp.exp(jnp.where(keep, power, -100.0)))
  return jnp.where(keep & (alpha >= layout.alpha_min), alpha, 0.0)


def _blend(alpha, features, transmittance):
  """Front-to-back blend of one chunk: alpha (G, P, B), features (G, B, F), transmittance (G, P) in.

  Returns the chunk's colour contribution (G, P, F) and the outgoing transmittance (G, P).
  """
  prefix = jnp.cumprod(1.0 - alpha, axis=-1)
  exclusive = jnp.concatenate([jnp.ones_like(prefix[..., :1]), prefix[..., :-1]], -1)
  weights = alpha * exclusive * transmittance[..., None]
  return jnp.einsum("gpb,gbf->gpf", weights, features), transmittance * prefix[..., -1]


def _chunk(gaussian_ids, starts, ends, chunk_index, layout: CompositeLayout):
  """Pair positions (G, B), their validity and Gaussian ids for chunk `chunk_index` of each tile."""
  positions = (starts[:, None] + chunk_index * layout.chunk_size
               + jnp.arange(layout.chunk_size, dtype=jnp.int32)).astype(jnp.int32)
  valid = positions < ends[:, None]
  ids = gaussian_ids[jnp.clip(positions, 0, gaussian_ids.shape[0] - 1)]
  return positions, valid, ids


def _tile_order(tile_start, tile_end, layout: CompositeLayout):
  """Tiles sorted by their number of pairs (most first), so that the tiles of one batch, which advance
  together, have similar amounts of work. None when there is a single batch (order does not matter)."""
  if layout.num_batches == 1:
    return None
  return jnp.argsort(tile_start - tile_end, stable=True)


def _batched(layout: CompositeLayout, order, *per_tile):
  """Per-tile arrays (num_tiles, ...) taken in `order`, padded to whole batches: (num_batches, G, ...)."""
  padded = layout.num_batches * layout.batch
  out = []
  for array in per_tile:
    array = array if order is None else array[order]
    array = jnp.pad(array, [(0, padded - array.shape[0])] + [(0, 0)] * (array.ndim - 1))
    out.append(array.reshape((layout.num_batches, layout.batch) + array.shape[1:]))
  return out


def _unbatched(layout: CompositeLayout, order, batched):
  """Inverse of `_batched` for one array: (num_batches, G, ...) -> (num_tiles, ...) in tile order."""
  array = batched.reshape((-1,) + batched.shape[2:])[: layout.num_tiles]
  return array if order is None else jnp.zeros_like(array).at[order].set(array)


def _pack(means2d, conics, opacities, features):
  """One (N, 6 + F) table [mean x, mean y, conic a, b, c, opacity, features...]: one gather per chunk."""
  return jnp.concatenate([means2d, conics, opacities[:, None], features], -1)


def _unpack(table):
  return table[..., 0:2], table[..., 2:5], table[..., 5], table[..., 6:]


def _forward(table, gaussian_ids, tile_start, tile_end, layout):
  dtype = table.dtype
  pixels_per_tile = layout.tile_size ** 2
  tile_index = jnp.arange(layout.num_tiles, dtype=jnp.int32)
  order = _tile_order(tile_start, tile_end, layout)
  starts, ends, tiles = _batched(layout, order, tile_start, tile_end, tile_index)

  def run_batch(xs):
    starts, ends, tiles = xs
    pixels = _pixel_centers(tiles, layout, dtype)
    num_chunks = ((jnp.max(ends - starts) + layout.chunk_size - 1) // layout.chunk_size).astype(jnp.int32)

    def cond(state):
      chunk_index, _, _, _, done = state
      return (chunk_index < num_chunks) & ~jnp.all(done)

    def body(state):
      chunk_index, transmittance, accum, last, done = state
      positions, valid, ids = _chunk(gaussian_ids, starts, ends, chunk_index, layout)
      keep = valid[:, None, :] & ~done[:, :, None]
      chunk_means, chunk_conics, chunk_opacities, chunk_features = _unpack(table[ids])
      alpha = _alpha(chunk_means, chunk_conics, chunk_opacities, pixels, keep, layout)
      inclusive = transmittance[..., None] * jnp.cumprod(1.0 - alpha, axis=-1)
      contributes = inclusive >= layout.transmittance_min
      alpha = jnp.where(contributes, alpha, 0.0)
      delta, transmittance = _blend(alpha, chunk_features, transmittance)
      added = contributes & (alpha > 0)
      last = jnp.maximum(last, jnp.max(jnp.where(added, positions[:, None, :] + 1, 0), -1))
      return chunk_index + 1, transmittance, accum + delta, last, done | ~contributes[..., -1]

    state = (jnp.zeros((), jnp.int32), jnp.ones((layout.batch, pixels_per_tile), dtype),
             jnp.zeros((layout.batch, pixels_per_tile, table.shape[-1] - 6), dtype),
             jnp.zeros((layout.batch, pixels_per_tile), jnp.int32),
             jnp.zeros((layout.batch, pixels_per_tile), bool))
    _, transmittance, accum, last, _ = jax.lax.while_loop(cond, body, state)
    return accum, transmittance, last

  outputs = jax.lax.map(run_batch, (starts, ends, tiles))
  return tuple(_unbatched(layout, order, x) for x in outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def composite(means2d, conics, opacities, features, gaussian_ids, tile_start, tile_end, layout):
  """Composites depth-sorted Gaussians per tile.

  Args: means2d (N, 2) pixels; conics (N, 3); opacities (N,); features (N, F); the `TileBins` arrays
  gaussian_ids (capacity,), tile_start / tile_end (num_tiles,); a static `CompositeLayout`.
  Returns: accumulated features (num_tiles, P, F) and final transmittance (num_tiles, P), P = tile_size**2,
  tiles row-major, pixels row-major within a tile.
  """
  table = _pack(means2d, conics, opacities, features)
  accum, transmittance, _ = _forward(table, gaussian_ids, tile_start, tile_end, layout)
  return accum, transmittance


def _composite_fwd(means2d, conics, opacities, features, gaussian_ids, tile_start, tile_end, layout):
  table = _pack(means2d, conics, opacities, features)
  accum, transmittance, last = _forward(table, gaussian_ids, tile_start, tile_end, layout)
  return (accum, transmittance), (table, gaussian_ids, tile_start, tile_end, transmittance, last)


def _composite_bwd(layout, residuals, cotangents):
  table, gaussian_ids, tile_start, tile_end, final_t, last = residuals
  grad_accum, grad_transmittance = cotangents
  dtype = table.dtype
  num_gaussians = table.shape[0]
  tile_index = jnp.arange(layout.num_tiles, dtype=jnp.int32)
  xs = _batched(layout, _tile_order(tile_start, tile_end, layout), tile_start, tile_end, tile_index, final_t,
                last, grad_accum, grad_transmittance)

  def run_batch(grads, xs):
    starts, ends, tiles, final_t, last, grad_accum, grad_final_t = xs
    pixels = _pixel_centers(tiles, layout, dtype)
    reach = jnp.maximum(jnp.max(last, axis=1) - starts, 0)
    num_chunks = ((jnp.max(reach) + layout.chunk_size - 1) // layout.chunk_size).astype(jnp.int32)

    def body(step, state):
      transmittance_after, grad_after, grads = state
      chunk_index = num_chunks - 1 - step
      positions, valid, ids = _chunk(gaussian_ids, starts, ends, chunk_index, layout)
      keep = valid[:, None, :] & (positions[:, None, :] < last[:, :, None])
      chunk = table[ids]

      def chunk_alpha(chunk):
        chunk_means, chunk_conics, chunk_opacities, _ = _unpack(chunk)
        return _alpha(chunk_means, chunk_conics, chunk_opacities, pixels, keep, layout)

      alpha, alpha_vjp = jax.vjp(chunk_alpha, chunk)
      transmittance_before = transmittance_after / jnp.prod(1.0 - alpha, axis=-1)
      _, blend_vjp = jax.vjp(_blend, alpha, _unpack(chunk)[3], transmittance_before)
      grad_alpha, grad_features, grad_before = blend_vjp((grad_accum, grad_after))
      (grad_chunk,) = alpha_vjp(grad_alpha)
      grad_chunk = grad_chunk.at[..., 6:].add(grad_features)
      grads = grads.at[jnp.where(valid, ids, num_gaussians)].add(grad_chunk, mode="drop")
      return transmittance_before, grad_before, grads

    _, _, grads = jax.lax.fori_loop(0, num_chunks, body, (final_t, grad_final_t, grads))
    return grads, None

  grads, _ = jax.lax.scan(run_batch, jnp.zeros_like(table), xs)
  return _unpack(grads) + (None, None, None)


composite.defvjp(_composite_fwd, _composite_bwd)
