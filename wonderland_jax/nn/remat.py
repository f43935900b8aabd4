"""Rematerialisation (`jax.checkpoint`) policies by name, applied per transformer block (DiT, LaLRM).

All keep activations on the device (no host offloading). With the 'xla' attention implementation the
attention scores are batched matmuls of (B, heads, S, S): quadratic in the ~17k video tokens of a 49-frame
480x720 clip, which is why only 'dots_all' keeps them. Models tag their attention output with
`checkpoint_name(..., ATTENTION)` for 'minimal'.
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from wonderland_jax.errors import WonderlandError

ATTENTION = "attention"

REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every intermediate is kept (fastest, most memory)
    # Nothing but the block's inputs: the whole block runs again in the backward pass (least memory).
    "full": jax.checkpoint_policies.nothing_saveable,
    # The block's attention output only: recomputes the projections, norms and feed-forward but not the
    # O(S^2) attention itself, about half a block's FLOPs at video lengths; one (B, S, D) tensor more than
    # 'full' per block. Works with fused attention kernels (cudnn), where the dot policies see no dots.
    "minimal": jax.checkpoint_policies.save_only_these_names(ATTENTION),
    # The outputs of the weight matmuls (projections, feed-forward, adaptive norms: dots without batch
    # dimensions); recomputes attention, norms and activations (Megatron's "selective" recomputation).
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Every matmul output, the attention scores included: little recomputation, much memory at long sequences.
    "dots_all": jax.checkpoint_policies.dots_saveable,
}


def remat_policy(name: str, what: str = "model config"):
  """The `jax.checkpoint` policy of `name` (None for 'none'); an unknown name is an error listing the choices."""
  if name not in REMAT_POLICIES:
    raise WonderlandError(f"{what}: unknown remat policy {name!r}; choose one of {', '.join(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]


@functools.lru_cache(maxsize=None)
def rematerialized(function, name: str):
  """`function(module, *args)` wrapped in `nnx.remat` with the policy `name` (itself for 'none'); cached so
  that a model traced twice reuses one wrapper."""
  if remat_policy(name) is None:
    return function
  return nnx.remat(function, policy=remat_policy(name), prevent_cse=True)
