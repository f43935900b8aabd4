"""Sequence-parallel attention over the mesh's 'context' axis, for the ~17.5k-token video and LaLRM sequences.

    out = sequence_parallel_attention(q, k, v, method="ring", implementation="xla")   # under jax.set_mesh(mesh)

q, k, v are (B, L, heads, head_dim) global arrays (inside jit); the token axis is split over 'context' (the
batch over 'data' x 'fsdp', the heads over 'tensor', as the logical rules place them), and each device works on
its share with `jax.shard_map`:

  ulysses  all-to-all from sequence-sharded to head-sharded (each device gets every token of heads/c heads),
           local attention with any implementation (xla, cudnn, splash), all-to-all back. Needs heads
           divisible by the context size (times the tensor size).
  ring     the local queries stay; key/value blocks travel around the ring (`ppermute`) c times; each block's
           partial result is merged by log-sum-exp (non-causal). Memory per device: one block of scores.

Sequences whose length does not divide over the axis are padded; padded keys are masked out (ring: by global
position; ulysses: after gathering, by a key mask) and padded queries dropped. Without a mesh, or with a
'context' axis of size 1, this is plain `dot_product_attention`; on a mesh, the splash kernel (a Mosaic
custom call XLA cannot partition) runs per device under `shard_map` (batch over data x fsdp, heads over tensor).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.attention import dot_product_attention, finish, initial_carry, merge_block, resolve
from wonderland_jax.nn.partitioning import dividing_axes

METHODS = ("none", "ulysses", "ring")
CONTEXT = "context"


def _axis_size(mesh, name: str) -> int:
  return int(dict(mesh.shape).get(name, 1))


def _spec(mesh, batch_size: int, tokens: str | None = CONTEXT) -> PartitionSpec:
  """(batch, tokens, heads, head_dim) placement inside the shard_map: the batch over 'data' x 'fsdp' as far as
  it divides (else those devices repeat the work), the heads over 'tensor'."""
  batch = tuple(axis for axis in dividing_axes(batch_size, ("data", "fsdp"), mesh) if _axis_size(mesh, axis) > 1)
  heads = "tensor" if "tensor" in mesh.axis_names and _axis_size(mesh, "tensor") > 1 else None
  return PartitionSpec(batch or None, tokens, heads, None)


def sequence_parallel_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, method: str = "ring",
                                implementation: str = "xla", scale: float | None = None) -> jax.Array:
  """See the module docstring. Self- or cross-attention (Lq may differ from Lk), non-causal, no mask."""
  if method not in METHODS:
    raise WonderlandError(f"unknown sequence-parallel attention {method!r}; use one of {METHODS}")
  mesh = jax.sharding.get_abstract_mesh()
  if method == "none" or mesh.empty or CONTEXT not in mesh.axis_names or _axis_size(mesh, CONTEXT) == 1:
    implementation = resolve(implementation, query.dtype)
    if implementation != "splash" or mesh.empty or all(size == 1 for size in dict(mesh.shape).values()):
      return dot_product_attention(query, key, value, implementation=implementation, scale=scale)
    spec = _spec(mesh, query.shape[0], tokens=None)
    local = functools.partial(dot_product_attention, implementation=implementation, scale=scale)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
        query, key, value)
  size = _axis_size(mesh, CONTEXT)
  heads = query.shape[2]
  tensor = _axis_size(mesh, "tensor") if "tensor" in mesh.axis_names else 1
  if heads % tensor:
    raise WonderlandError(f"{heads} attention heads do not split over the mesh's tensor axis of {tensor}")
  if method == "ulysses" and (heads // tensor) % size:
    raise WonderlandError(f"ulysses attention needs the heads per tensor shard ({heads // tensor}) divisible by "
                          f"the context axis ({size}); use method 'ring'")
  scale = query.shape[-1] ** -0.5 if scale is None else scale
  q_length, kv_length = query.shape[1], key.shape[1]
  pad = lambda x, length: jnp.pad(x, ((0, 0), (0, -length % size), (0, 0), (0, 0)))
  query, key, value = pad(query, q_length), pad(key, kv_length), pad(value, kv_length)
  spec = _spec(mesh, query.shape[0])
  body = functools.partial(_ulysses if method == "ulysses" else _ring, kv_length=kv_length, size=size,
                           scale=scale, implementation=implementation)
  out = jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
      query, key, value)
  return out[:, :q_length]


def _ulysses(query, key, value, *, kv_length: int, size: int, scale: float, implementation: str):
  # (B, L/c, N, D) -> (B, L, N/c, D): split heads, gather tokens.
  to_heads = lambda x: jax.lax.all_to_all(x, CONTEXT, split_axis=2, concat_axis=1, tiled=True)
  q, k, v = to_heads(query), to_heads(key), to_heads(value)
  if k.shape[1] != kv_length:  # padded keys: masked out
    mask = (jnp.arange(k.shape[1]) < kv_length)[None, None, None, :]
    out = dot_product_attention(q, k, v, implementation="xla" if implementation in ("splash", "chunked")
                                else implementation,
                                scale=scale, mask=mask)
  else:
    out = dot_product_attention(q, k, v, implementation=implementation, scale=scale)
  return jax.lax.all_to_all(out, CONTEXT, split_axis=1, concat_axis=2, tiled=True)


def _ring(query, key, value, *, kv_length: int, size: int, scale: float, implementation: str):
  del implementation  # the blocks are merged by log-sum-exp (attention.merge_block), in float32
  q = query.astype(jnp.float32) * scale
  block = key.shape[1]
  index = jax.lax.axis_index(CONTEXT)
  permutation = [(i, (i + 1) % size) for i in range(size)]

  def step(carry, hop):
    k, v, partial = carry
    # The block held now started on device (index - hop) mod c: its global key positions.
    positions = ((index - hop) % size) * block + jnp.arange(block)
    partial = merge_block(partial, q, k, v, (positions < kv_length)[None, None, None, :])
    k, v = jax.lax.ppermute(k, CONTEXT, permutation), jax.lax.ppermute(v, CONTEXT, permutation)
    return (k, v, partial), None

  (_, _, partial), _ = jax.lax.scan(step, (key, value, initial_carry(query, value.shape[-1])), jnp.arange(size))
  return finish(partial, query.dtype)
