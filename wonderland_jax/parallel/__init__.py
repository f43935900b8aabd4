"""Meshes, logical-axis rules and ahead-of-time plans (see `mesh.py`, `plan.py`)."""

from wonderland_jax.parallel.mesh import AXES, DEFAULT_RULES, make_mesh, parse_axes  # noqa: F401
