"""Logical-axis sharding, the one home of it: logical names on params, names -> mesh specs, parameter
shardings, activation constraints and the default rules. Usable with or without a mesh; imports nothing of the
package but `errors`, so `checkpoints.load`, the models, `parallel/` and the training loop all build on it.

Params are annotated with logical names (`kernel_metadata=axes("embed", "mlp")`, or
`nnx.with_partitioning(init, ("embed", "mlp"))` through `partitioned`). Rules map a logical name to mesh axes,
flax.linen style (`logical_to_mesh_spec`: for each dimension the first rule whose mesh axes are still free
wins). `DEFAULT_RULES` gives FSDP over 'fsdp' (params' embed dim), tensor parallelism over 'tensor' (heads, MLP,
vocab), batch over 'data' x 'fsdp' and the token axis over 'context'; with axes of size 1 the same rules mean
plain data parallelism, so FSDP, tensor and context parallelism are mesh-shape changes in the config.
`param_sharding` / `state_shardings` place params by their names; `building_on(mesh, rules)`: models built
inside it get their params sharded as they are created, and `checkpoints.load` inside it restores straight
onto the mesh.

Flax 0.12 shards annotated variables eagerly and refuses to build them when no mesh is set;
`param_init_context()` keeps the names as metadata and builds plain arrays in that case, and shards eagerly
when a mesh is set (`jax.set_mesh`).

Activations: `constrain(x, "batch", "length", None)` pins the main activations' layout (batch over the
'batch' rule's axes, tokens over 'context') while a step is traced under `activation_rules(rules)` and a mesh;
elsewhere it returns x unchanged. Activation names are their own: 'embed' of a param means FSDP, but an
activation's feature axis stays whole (None).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from wonderland_jax.errors import WonderlandError

LogicalRules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]

DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("channels", None),  # the VAE's convolutions: replicated
)

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


def default_sharding() -> SingleDeviceSharding:
  device = jax.config.jax_default_device
  return SingleDeviceSharding(device if isinstance(device, jax.Device) else jax.devices()[0])


def logical_to_mesh_spec(names: Sequence[Any], rules: LogicalRules, mesh: jax.sharding.Mesh) -> PartitionSpec:
  """Logical axis names -> PartitionSpec, flax.linen style: for each dim the first rule for its name whose
  mesh axis is not used yet by an earlier dim; names without a rule (and None) are replicated."""
  used: set[str] = set()
  spec = []
  for name in names:
    choice = None
    for logical, mesh_axes in rules:
      if logical != name or name is None:
        continue
      axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
      if not axes:
        break  # An explicit (name, None): replicate.
      if used.isdisjoint(axes):
        choice = mesh_axes if isinstance(mesh_axes, str) else tuple(axes)
        used.update(axes)
        break
    spec.append(choice)
  unknown = sorted({a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)}
                   - set(mesh.axis_names))
  if unknown:
    raise WonderlandError(f"sharding rules name mesh axes {unknown} not in the mesh {tuple(mesh.axis_names)}")
  return PartitionSpec(*spec)


def _logical_names(leaf: nnx.Variable) -> tuple | None:
  metadata = leaf.get_metadata()
  for field in ("out_sharding", "sharding_names", "sharding"):
    names = metadata.get(field)
    if names:
      return tuple(names.spec) if isinstance(names, NamedSharding) else tuple(names)
  return None


def param_sharding(path: tuple, leaf: nnx.Variable, shape: tuple, mesh, rules) -> jax.sharding.Sharding:
  """Where the param `leaf` (at `path`, of `shape`) goes: by its logical axis names and `rules` on `mesh`
  (replicated without names or rules; the default device without a mesh). Raises `WonderlandError` when a
  dimension does not divide over its mesh axes."""
  if mesh is None:
    return default_sharding()
  names = _logical_names(leaf)
  if not names or not rules:
    return NamedSharding(mesh, PartitionSpec())
  if len(names) != len(shape):
    raise WonderlandError(f"param {_dotted(path)}: {len(names)} logical axis names {names} for shape {shape}")
  spec = logical_to_mesh_spec(names, rules, mesh)
  for dim, entry in zip(shape, spec):
    axes = () if entry is None else (entry,) if isinstance(entry, str) else entry
    size = int(np.prod([mesh.shape[a] for a in axes]))
    if dim % size:
      raise WonderlandError(f"param {_dotted(path)} of shape {shape} (axes {names}) cannot be split as {spec} "
                            f"over mesh {dict(mesh.shape)}: {dim} is not divisible by {size}")
  return NamedSharding(mesh, spec)


def rules_from(config_rules) -> tuple:
  """Rules from a config: a sequence of (logical, mesh axis | [axes] | None) pairs; None -> DEFAULT_RULES."""
  if config_rules is None:
    return DEFAULT_RULES
  rules = []
  for entry in config_rules:
    if len(entry) != 2:
      raise WonderlandError(f"sharding rule {entry!r}: expected (logical name, mesh axis or axes)")
    logical, mesh_axes = entry
    rules.append((str(logical), mesh_axes if mesh_axes is None or isinstance(mesh_axes, str) else tuple(mesh_axes)))
  return tuple(rules)


def logical_sharding(mesh: Mesh, rules, *names: str | None) -> NamedSharding:
  """The NamedSharding of an array whose dimensions have these logical names."""
  return NamedSharding(mesh, logical_to_mesh_spec(names, rules, mesh))


def state_shardings(state: nnx.State, mesh: Mesh, rules) -> dict:
  """A pure dict (the structure of `nnx.to_pure_dict(state)`) of NamedShardings for the variables of `state`,
  from their logical names; variables without names are replicated."""
  flat = [(path, param_sharding(path, variable, tuple(variable.get_value().shape), mesh, rules))
          for path, variable in nnx.to_flat_state(state)]
  return nnx.to_pure_dict(nnx.from_flat_state([(path, nnx.Variable(sharding)) for path, sharding in flat]))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Arrays with a leading batch axis: sharded over the 'batch' rule's axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(logical_to_mesh_spec(("batch",), rules, mesh)[0], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def building_on(mesh: Mesh, rules):
  """Params created inside are born sharded on `mesh` by `rules` (see the module docstring)."""
  with jax.set_mesh(mesh), spmd.logical_axis_rules(tuple(rules)):
    yield


def _dotted(path: tuple) -> str:
  return ".".join(str(part) for part in path)
