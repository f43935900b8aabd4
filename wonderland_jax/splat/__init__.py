"""Gaussian splatting: the `Gaussians` pytree, the tile-based differentiable rasterizer, .ply / .splat I/O."""

from wonderland_jax.splat.formats import load_scene, load_splat
from wonderland_jax.splat.gaussians import Gaussians, concatenate
from wonderland_jax.splat.ply import load_ply, save_ply
from wonderland_jax.splat.rasterize import RasterSettings, RenderOutput, capacity_for, count_intersections, rasterize
