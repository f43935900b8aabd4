"""Device meshes with the axes ('data', 'fsdp', 'context', 'tensor') and the logical-axis rules that place params
and activations on them.

    mesh = make_mesh("data=2,fsdp=-1")          # -1: the rest of the devices; missing axes have size 1
    mesh = make_mesh({"fsdp": 8}, dcn="data=4")  # 4 slices / nodes x 8 devices: data parallel across them
    shardings = state_shardings(abstract_state, mesh, rules)

Params carry logical axis names (`nn.partitioning.axes`); the rules map a logical name to mesh axes, first
match whose mesh axes are still free wins (`checkpoints.logical_to_mesh_spec`). `DEFAULT_RULES` gives FSDP over
'fsdp' (params' embed dim), tensor parallelism over 'tensor' (heads, MLP, vocab), batch over 'data' x 'fsdp'
and the token axis over 'context'; with axes of size 1 the same rules mean plain data parallelism, so FSDP,
tensor and context parallelism are mesh-shape changes in the config.

`building_on(mesh, rules)`: models built inside it get their params sharded as they are created (Flax's eager
sharding with these rules), and `checkpoints.load` inside it restores straight onto the mesh.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wonderland_jax.checkpoints import logical_to_mesh_spec, param_sharding
from wonderland_jax.errors import WonderlandError

AXES = ("data", "fsdp", "context", "tensor")

DEFAULT_RULES: tuple = (
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("channels", None),  # the VAE's convolutions: replicated
)


def parse_axes(spec: str | Mapping[str, int] | None) -> dict[str, int]:
  """'data=2,fsdp=-1' or {'data': 2, 'fsdp': -1} -> {axis: size} over AXES (missing axes: 1)."""
  if spec is None or spec == "":
    values: dict = {}
  elif isinstance(spec, str):
    values = {}
    for part in spec.split(","):
      name, _, size = part.partition("=")
      try:
        values[name.strip()] = int(size)
      except ValueError:
        raise WonderlandError(f"mesh {spec!r}: expected axis=size pairs like 'data=2,fsdp=4', got {part!r}") from None
  else:
    values = {name: int(size) for name, size in spec.items()}
  unknown = sorted(set(values) - set(AXES))
  if unknown:
    raise WonderlandError(f"mesh: unknown axes {unknown}; the axes are {AXES}")
  if sum(size == -1 for size in values.values()) > 1:
    raise WonderlandError(f"mesh {values}: only one axis may be -1 (the rest of the devices)")
  if any(size == 0 or size < -1 for size in values.values()):
    raise WonderlandError(f"mesh {values}: sizes must be positive (or -1 for the rest)")
  return {axis: values.get(axis, 1) for axis in AXES}


def _resolve(sizes: dict[str, int], count: int, what: str) -> list[int]:
  known = math.prod(size for size in sizes.values() if size != -1)
  if -1 in sizes.values():
    if count % known:
      raise WonderlandError(f"{what} {sizes}: {count} devices are not divisible by {known}")
    sizes = {axis: count // known if size == -1 else size for axis, size in sizes.items()}
  if math.prod(sizes.values()) != count:
    raise WonderlandError(f"{what} {sizes} has {math.prod(sizes.values())} devices; there are {count}")
  return [sizes[axis] for axis in AXES]


def make_mesh(axes: str | Mapping[str, int] | None = None, *, dcn: str | Mapping[str, int] | None = None,
              devices: Sequence | None = None) -> Mesh:
  """A mesh over `devices` (default all) with axes AXES, Auto axis types.

  axes: sizes per axis within a slice / node (ICI); default everything on 'data'. dcn: optional sizes across
  slices / nodes (the data-centre network); the mesh is then `mesh_utils.create_hybrid_device_mesh`'s, each
  axis of size ici x dcn."""
  devices = list(jax.devices() if devices is None else devices)
  axis_types = (jax.sharding.AxisType.Auto,) * len(AXES)
  if dcn is None:
    sizes = parse_axes(axes if axes else {"data": -1})
    shape = _resolve(sizes, len(devices), "mesh")
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
  dcn_sizes = parse_axes(dcn)
  slices = math.prod(size for size in dcn_sizes.values() if size != -1)
  if -1 in dcn_sizes.values():
    raise WonderlandError("mesh: the dcn axes take no -1")
  if len(devices) % slices:
    raise WonderlandError(f"mesh: {len(devices)} devices do not split into {slices} slices (dcn {dcn_sizes})")
  ici_shape = _resolve(parse_axes(axes if axes else {"data": -1}), len(devices) // slices, "mesh (per slice)")
  dcn_shape = [dcn_sizes[axis] for axis in AXES]
  if all(hasattr(device, "slice_index") for device in devices):  # TPU slices
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, allow_split_physical_axes=True)
  elif len({device.process_index for device in devices}) == slices:  # GPU nodes: one process per node
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=True,
                                                allow_split_physical_axes=True)
  else:
    # No slice or node structure (one host's CPU devices: tests and plans): consecutive blocks of devices stand
    # for the slices, with the same layout: slice axes outside, each mesh axis of size dcn x ici.
    blocks = np.asarray(devices, dtype=object).reshape(*dcn_shape, *ici_shape)
    order = [i for pair in zip(range(len(AXES)), range(len(AXES), 2 * len(AXES))) for i in pair]
    grid = blocks.transpose(order).reshape([d * i for d, i in zip(dcn_shape, ici_shape)])
  return Mesh(grid, AXES, axis_types=axis_types)


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


def device_count(mesh: Mesh) -> int:
  return int(np.prod(list(mesh.shape.values())))


@contextlib.contextmanager
def building_on(mesh: Mesh, rules):
  """Params created inside are born sharded on `mesh` by `rules` (see the module docstring)."""
  with jax.set_mesh(mesh), spmd.logical_axis_rules(tuple(rules)):
    yield
