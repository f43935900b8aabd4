"""Logical axis names on params, usable with or without a mesh.

Params are annotated with logical names (`kernel_metadata=axes("embed", "mlp")`, or
`nnx.with_partitioning(init, ("embed", "mlp"))` through `partitioned`); `parallel/` and
`checkpoints.load` map the names to mesh axes with rules from the config. Flax 0.12 shards annotated
variables eagerly and refuses to build them when no mesh is set; `param_init_context()` keeps the names as
metadata and builds plain arrays in that case, and shards eagerly when a mesh is set (`jax.set_mesh`).
"""

from __future__ import annotations

import contextlib

import jax
from flax import nnx


def param_init_context():
  """The context in which model constructors create their params (see the module docstring)."""
  if jax.sharding.get_abstract_mesh().empty:
    return nnx.use_eager_sharding(False)
  return contextlib.nullcontext()


def partitioned(init, *names: str | None):
  """`init` annotated with one logical axis name per dimension (None = replicated)."""
  return nnx.with_partitioning(init, names)


def axes(*names: str | None) -> dict:
  """Variable metadata naming one logical axis per dimension (None = replicated), for the `*_metadata`
  arguments of the nnx layers (`nnx.Linear(..., kernel_metadata=axes("embed", "mlp"))`)."""
  return {"out_sharding": names}
