"""One attention entry point for every model: layout (B, L, heads, head_dim), implementation by name.

  xla    jax.nn.dot_product_attention's XLA path: any backend, any dtype (the reference for the others).
  cudnn  cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16).
  chunked  memory-efficient attention in plain JAX on any backend: keys / values in chunks of CHUNK tokens under
         lax.scan with a running log-sum-exp, each chunk rematerialised in the backward pass, so no (Lq, Lk) score
         matrix is ever whole (Rabe & Staats); what fused kernels give, for backends without one and for plans.
  splash Pallas splash attention (TPUs): sequences padded to whole blocks, the padding kept out of the softmax
         by segment ids; no mask argument. `splash_attention(..., interpret=True)` runs the same kernel in
         Pallas' interpreter on any backend (how the tests check it on CPU).
  auto   the fused one of the platform the code is compiled for (`parallel.targets.compile_platform`, not the
         host: a plan for a TPU traces splash on a CPU host): cudnn on NVIDIA GPUs for 16-bit inputs, splash
         on TPUs, chunked elsewhere (xla where a mask is given and the fused kernel takes none).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from wonderland_jax.errors import WonderlandError
from wonderland_jax.parallel.targets import compile_platform

IMPLEMENTATIONS = ("xla", "cudnn", "splash", "chunked", "auto")
CHUNK = 1024  # key / value tokens per step of the 'chunked' implementation
_LANES = 128  # splash blocks are multiples of the TPU's 128 lanes


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, implementation: str = "xla",
                          mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
  """softmax(q k^T * scale + mask) v, softmax in float32. q (B, Lq, N, D); k, v (B, Lk, N, D) -> (B, Lq, N, D).

  mask: optional boolean (B or 1, N or 1, Lq, Lk), True = attend. scale defaults to 1 / sqrt(D).
  """
  implementation = resolve(implementation, query.dtype, masked=mask is not None)
  platform = compile_platform()
  if implementation == "cudnn" and platform != "gpu":
    raise WonderlandError(f"attention implementation 'cudnn' needs an NVIDIA GPU; use 'auto' or 'xla' on {platform}")
  if implementation == "chunked":
    return chunked_attention(query, key, value, mask=mask, scale=scale)
  if implementation == "splash":
    if platform != "tpu":
      raise WonderlandError(f"attention implementation 'splash' needs a TPU; use 'auto' or 'xla' on {platform}")
    if mask is not None:
      raise WonderlandError("attention implementation 'splash' takes no mask; use 'xla'")
    return splash_attention(query, key, value, scale=scale)
  if implementation == "xla":
    # Scores in float32 whatever the input dtype (as torch's SDPA math path accumulates).
    dtype = query.dtype
    query, key, value = (x.astype(jnp.float32) for x in (query, key, value))
    out = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale, implementation="xla")
    return out.astype(dtype)
  return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale, implementation="cudnn")


def resolve(implementation: str, dtype=jnp.float32, *, masked: bool = False, platform: str | None = None) -> str:
  """The implementation `implementation` names for inputs of `dtype` on `platform` (default: the one being
  compiled for); 'auto' as in the module docstring, any other name as it is."""
  if implementation not in IMPLEMENTATIONS:
    raise WonderlandError(f"unknown attention implementation {implementation!r}; use one of {IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  platform = platform or compile_platform()
  if platform == "gpu" and jnp.dtype(dtype).itemsize == 2:
    return "cudnn"
  if masked:
    return "xla"
  return "splash" if platform == "tpu" else "chunked"


def _block(length: int) -> int:
  return 512 if length >= 512 else _LANES


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_length: int, kv_length: int, interpret: bool):
  # Imported here: the Pallas TPU modules are only needed (and only load everywhere) when splash is used.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel  # noqa: PLC0415
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks  # noqa: PLC0415
  block_q, block_kv = _block(q_length), _block(kv_length)
  sizes = kernel.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv, block_q_dkv=block_q,
                            block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                            block_kv_dq=block_kv)
  mask = masks.MultiHeadMask([masks.FullMask((q_length, kv_length)) for _ in range(heads)])
  return kernel.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, scale: float | None = None,
                     interpret: bool = False) -> jax.Array:
  """Non-causal attention through Pallas' splash kernel; layout and result as `dot_product_attention`.

  Both sequences are padded to whole blocks (512 tokens, or 128 for short ones); padded keys carry segment id
  1 and real ones 0, so no real query attends to padding. The scale is applied to the queries (in float32).
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel  # noqa: PLC0415 (as above)
  batch, q_length, heads, head_dim = query.shape
  kv_length = key.shape[1]
  scale = head_dim ** -0.5 if scale is None else scale
  q_padded = -(-q_length // _block(q_length)) * _block(q_length)
  kv_padded = -(-kv_length // _block(kv_length)) * _block(kv_length)
  pad = lambda x, length: jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  q = pad((query.astype(jnp.float32) * scale).astype(query.dtype), q_padded)
  k, v = pad(key, kv_padded), pad(value, kv_padded)
  segments = kernel.SegmentIds(q=(jnp.arange(q_padded) >= q_length).astype(jnp.int32),
                               kv=(jnp.arange(kv_padded) >= kv_length).astype(jnp.int32))
  attend = _splash_kernel(heads, q_padded, kv_padded, interpret)
  out = jax.vmap(lambda q1, k1, v1: attend(q1, k1, v1, segment_ids=segments))(q, k, v)
  return out.transpose(0, 2, 1, 3)[:, :q_length].astype(query.dtype)


def merge_block(carry, q, k, v, valid):
  """One key/value block into the running (out, row max, row sum) of an online softmax (float32); `valid` (Lk,)
  bool or None marks the keys that count. Shared by the chunked and the ring attention."""
  out, row_max, row_sum = carry
  scores = jnp.einsum("bqnd,bknd->bnqk", q, k.astype(jnp.float32))
  if valid is not None:
    scores = jnp.where(valid, scores, -jnp.inf)
  new_max = jnp.maximum(row_max, jnp.max(scores, axis=-1))
  safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
  weights = jnp.exp(scores - safe_max[..., None])
  correction = jnp.exp(jnp.where(jnp.isfinite(row_max), row_max - safe_max, -jnp.inf))
  row_sum = row_sum * correction + jnp.sum(weights, axis=-1)
  out = out * jnp.moveaxis(correction, 1, 2)[..., None] + jnp.einsum("bnqk,bknd->bqnd", weights,
                                                                      v.astype(jnp.float32))
  return out, new_max, row_sum


def initial_carry(query: jax.Array, value_dim: int):
  batch, length, heads, _ = query.shape
  return (jnp.zeros((batch, length, heads, value_dim), jnp.float32),
          jnp.full((batch, heads, length), -jnp.inf, jnp.float32), jnp.zeros((batch, heads, length), jnp.float32))


def finish(carry, dtype) -> jax.Array:
  out, _, row_sum = carry
  return (out / jnp.moveaxis(row_sum, 1, 2)[..., None]).astype(dtype)


def chunked_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, mask: jax.Array | None = None,
                      scale: float | None = None, chunk: int = CHUNK) -> jax.Array:
  """The 'chunked' implementation (see the module docstring); layout and result as `dot_product_attention`."""
  if mask is not None:
    raise WonderlandError("attention implementation 'chunked' takes no mask; use 'xla'")
  scale = query.shape[-1] ** -0.5 if scale is None else scale
  length = key.shape[1]
  chunk = min(chunk, length)
  count = -(-length // chunk)
  pad = ((0, 0), (0, count * chunk - length), (0, 0), (0, 0))
  blocks = lambda x: jnp.pad(x, pad).reshape(x.shape[0], count, chunk, *x.shape[2:]).swapaxes(0, 1)
  q = query.astype(jnp.float32) * scale

  @jax.checkpoint
  def step(carry, inputs):
    index, k, v = inputs
    valid = (index * chunk + jnp.arange(chunk)) < length
    return merge_block(carry, q, k, v, valid[None, None, None, :]), None

  carry, _ = jax.lax.scan(step, initial_carry(query, value.shape[-1]), (jnp.arange(count), blocks(key),
                                                                          blocks(value)))
  return finish(carry, query.dtype)
