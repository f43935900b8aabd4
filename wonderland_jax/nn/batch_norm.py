"""Inference-mode BatchNorm for the frozen metric networks ported from torch (FID Inception, FVD I3D)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class FrozenBatchNorm(nnx.Module):
  """torch's BatchNorm{1,2,3}d in eval mode over the last axis: (x - mean) / sqrt(var + eps) * scale + bias.

  `scale` / `bias` / `mean` / `var` (C,) are torch's `weight` / `bias` / `running_mean` / `running_var`. All four
  are `nnx.Param`s, so the weight converters (which fill Params) load them; they are constants of a frozen
  network: keep such a model out of any optimizer."""

  def __init__(self, channels: int, eps: float):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.mean = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.var = nnx.Param(jnp.ones((channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., C) -> (..., C) in x's dtype (the affine factors are formed in float32)."""
    factor = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
    shift = self.bias[...] - self.mean[...] * factor
    return x * factor.astype(x.dtype) + shift.astype(x.dtype)
