"""Meshes, logical-axis rules, multi-host start-up and ahead-of-time plans (`mesh.py`, `distributed.py`,
`plan.py`)."""

from wonderland_jax.parallel.distributed import initialize  # noqa: F401

from wonderland_jax.parallel.mesh import AXES, DEFAULT_RULES, make_mesh, parse_axes  # noqa: F401
