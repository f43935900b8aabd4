"""Logical-axis sharding (`nn/partitioning.py`): names -> mesh specs as flax.linen resolves them."""

import jax
from jax.sharding import PartitionSpec

from wonderland_jax.nn.partitioning import logical_to_mesh_spec


def test_logical_rules_follow_linen():
  mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  rules = [("batch", "data"), ("mlp", "tensor"), ("heads", "tensor"), ("heads", "data")]
  assert logical_to_mesh_spec(("batch", "mlp"), rules, mesh) == PartitionSpec("data", "tensor")
  # 'tensor' is taken by mlp, so heads falls through to its next rule; 'data' then is taken too.
  assert logical_to_mesh_spec(("mlp", "heads"), rules, mesh) == PartitionSpec("tensor", "data")
  assert logical_to_mesh_spec((None, "other"), rules, mesh) == PartitionSpec(None, None)
