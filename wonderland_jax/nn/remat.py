"""Rematerialisation (`jax.checkpoint`) policies by name, applied per transformer block.

  none     no remat: every activation of the backward pass is kept (fastest, most memory).
  full     nothing saved inside a block; the whole block is recomputed in the backward pass (least memory).
  dots     matmul outputs saved, element-wise work (norms, activations, softmax) recomputed.
  dots_no_batch
           only matmuls without batch dimensions saved (projections and MLPs; attention's score and
           value products, which grow with sequence length squared, are recomputed).
"""

from __future__ import annotations

import jax

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
  """The `jax.checkpoint` policy of `name`, or None for "none" (validated by the model configs)."""
  return REMAT_POLICIES[name]
