"""Meshes and multi-host start-up (`mesh.py`, `distributed.py`). Logical-axis sharding: `nn.partitioning`;
ahead-of-time plans of a training step: `train.plan`."""

from wonderland_jax.parallel.distributed import initialize  # noqa: F401
from wonderland_jax.parallel.mesh import AXES, make_mesh, parse_axes  # noqa: F401
