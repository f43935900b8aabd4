"""Logical axis names on params, usable with or without a mesh.

Params are annotated with logical names (`kernel_metadata=axes("embed", "mlp")`, or
`nnx.with_partitioning(init, ("embed", "mlp"))` through `partitioned`); `parallel/` and
`checkpoints.load` map the names to mesh axes with rules from the config. Flax 0.12 shards annotated
variables eagerly and refuses to build them when no mesh is set; `param_init_context()` keeps the names as
metadata and builds plain arrays in that case, and shards eagerly when a mesh is set (`jax.set_mesh`).

Activations: `constrain(x, "batch", "length", None)` pins the main activations' layout (batch over the
'batch' rule's axes, tokens over 'context') while a step is traced under `activation_rules(rules)` and a mesh;
elsewhere it returns x unchanged. Activation names are their own: 'embed' of a param means FSDP, but an
activation's feature axis stays whole (None).
"""

from __future__ import annotations

import contextlib

import jax
from flax import nnx

_ACTIVATION_RULES: list = []


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


@contextlib.contextmanager
def activation_rules(rules):
  """While active (and a mesh is set), `constrain` applies `rules` to activations. Trace (jit) the function
  inside it: JAX caches traces by function and mesh, not by this context."""
  _ACTIVATION_RULES.append(tuple(rules))
  try:
    yield
  finally:
    _ACTIVATION_RULES.pop()


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """`x` with a sharding constraint from its logical axis names (see the module docstring); mesh axes that do
  not divide a dimension are left out for it."""
  mesh = jax.sharding.get_abstract_mesh()
  if not _ACTIVATION_RULES or mesh.empty:
    return x
  from wonderland_jax.checkpoints import logical_to_mesh_spec  # noqa: PLC0415 (checkpoints imports this module)
  spec = []
  for size, entry in zip(x.shape, logical_to_mesh_spec(names, _ACTIVATION_RULES[-1], mesh)):
    kept = dividing_axes(size, () if entry is None else (entry,) if isinstance(entry, str) else entry, mesh)
    spec.append(kept if len(kept) > 1 else kept[0] if kept else None)
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(*spec))


def dividing_axes(size: int, mesh_axes, mesh) -> tuple:
  """The leading mesh axes (of `mesh_axes`, in order) whose sizes together divide a dimension of `size`: the
  placement that needs no padding."""
  kept, product = [], 1
  for axis in mesh_axes:
    if axis in mesh.axis_names and size % (product * mesh.shape[axis]) == 0:
      kept.append(axis)
      product *= mesh.shape[axis]
  return tuple(kept)
