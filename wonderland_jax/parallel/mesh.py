"""Device meshes with the axes ('data', 'fsdp', 'context', 'tensor').

    mesh = make_mesh("data=2,fsdp=-1")          # -1: the rest of the devices; missing axes have size 1
    mesh = make_mesh({"fsdp": 8}, dcn="data=4")  # 4 slices / nodes x 8 devices: data parallel across them

What goes where on a mesh (logical axis names -> mesh axes, `DEFAULT_RULES`, param and batch shardings,
`building_on`) lives in `nn.partitioning`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from wonderland_jax.errors import WonderlandError

AXES = ("data", "fsdp", "context", "tensor")


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


def device_count(mesh: Mesh) -> int:
  return int(np.prod(list(mesh.shape.values())))
