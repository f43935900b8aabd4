"""Gaussian splatting: the `Gaussians` pytree, the tile-based differentiable rasterizer, .ply I/O."""

from wonderland_jax.splat.gaussians import Gaussians, concatenate
