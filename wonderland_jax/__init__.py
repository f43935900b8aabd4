"""wonderland_jax: Wonderland (single image -> 3D Gaussian scene) in JAX/Flax."""

__version__ = "0.1.0"
