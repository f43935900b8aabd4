"""One attention entry point for every model: layout (B, L, heads, head_dim), implementation by name.

  xla    jax.nn.dot_product_attention's XLA path: any backend, any dtype (the reference for the others).
  cudnn  cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16).
  splash Pallas splash attention (TPUs): sequences padded to whole blocks, the padding kept out of the softmax
         by segment ids; no mask argument. `splash_attention(..., interpret=True)` runs the same kernel in
         Pallas' interpreter on any backend (how the tests check it on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from wonderland_jax.errors import WonderlandError

IMPLEMENTATIONS = ("xla", "cudnn", "splash")
_LANES = 128  # splash blocks are multiples of the TPU's 128 lanes


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *, implementation: str = "xla",
                          mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
  """softmax(q k^T * scale + mask) v, softmax in float32. q (B, Lq, N, D); k, v (B, Lk, N, D) -> (B, Lq, N, D).

  mask: optional boolean (B or 1, N or 1, Lq, Lk), True = attend. scale defaults to 1 / sqrt(D).
  """
  if implementation not in IMPLEMENTATIONS:
    raise WonderlandError(f"unknown attention implementation {implementation!r}; use one of {IMPLEMENTATIONS}")
  if implementation == "cudnn" and jax.default_backend() != "gpu":
    raise WonderlandError("attention implementation 'cudnn' needs an NVIDIA GPU; use 'xla' on "
                          f"{jax.default_backend()}")
  if implementation == "splash":
    if jax.default_backend() != "tpu":
      raise WonderlandError(f"attention implementation 'splash' needs a TPU; use 'xla' on {jax.default_backend()}")
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


def _block(length: int) -> int:
  return 512 if length >= 512 else _LANES


@functools.lru_cache(maxsize=64)
def _splash_kernel(heads: int, q_length: int, kv_length: int, interpret: bool):
  # Imported here: the Pallas TPU modules are only needed (and only load everywhere) when splash is used.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
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
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
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
