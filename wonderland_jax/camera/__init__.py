"""Cameras: the `Camera` pytree, Plücker rays, trajectories and pose-file readers."""

from wonderland_jax.camera.camera import Camera, intrinsics_matrix, rigid_inverse
