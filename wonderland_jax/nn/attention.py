"""One attention entry point for every model: layout (B, L, heads, head_dim), implementation by name.

  xla    jax.nn.dot_product_attention's XLA path: any backend, any dtype (the reference for the others).
  cudnn  cuDNN's fused flash attention (NVIDIA GPUs, bf16/fp16).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wonderland_jax.errors import WonderlandError

IMPLEMENTATIONS = ("xla", "cudnn")


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
  if implementation == "xla":
    # Scores in float32 whatever the input dtype (as torch's SDPA math path accumulates).
    dtype = query.dtype
    query, key, value = (x.astype(jnp.float32) for x in (query, key, value))
    out = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale, implementation="xla")
    return out.astype(dtype)
  return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale, implementation="cudnn")
