"""Rasterizer benchmark: our tiled rasterizer vs a dense all-Gaussians-at-all-pixels JAX renderer.

    python benchmarks/rasterize.py                 # the full table (N = 1e3, 1e4, 1e5; 256^2 and 512^2)
    python benchmarks/rasterize.py --quick         # N = 1e3, 1e4 at 256^2 only

Prints one Markdown table: forward and forward+backward milliseconds per frame (median of --repeats runs
after a warm-up compile) and the peak memory XLA plans for the compiled program (arguments + outputs +
temporaries, from `compiled.memory_analysis()`) of the fwd+bwd program, for both renderers side by side.
Scenes: N random
Gaussians in the view frustum at depths 2..10, sizes shrinking as 1/sqrt(N) (about 2-10 pixel radii at
N = 1e4, 256^2), opacities uniform in [0.05, 1].
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.camera import Camera
from wonderland_jax.splat import Gaussians, capacity_for, count_intersections, rasterize
from wonderland_jax.splat.project import project


def random_scene(num: int, seed: int = 0) -> Gaussians:
  rng = np.random.default_rng(seed)
  depth = rng.uniform(2.0, 10.0, num)
  xy = rng.uniform(-0.6, 0.6, (num, 2)) * depth[:, None]
  size = np.exp(rng.uniform(np.log(0.01), np.log(0.05), (num, 3))) * np.sqrt(1e4 / num) * (depth[:, None] / 5)
  return Gaussians(means=jnp.asarray(np.concatenate([xy, depth[:, None]], 1), jnp.float32),
                   quats=jnp.asarray(rng.normal(size=(num, 4)), jnp.float32),
                   scales=jnp.asarray(size, jnp.float32),
                   opacities=jnp.asarray(rng.uniform(0.05, 1.0, num), jnp.float32),
                   colors=jnp.asarray(rng.uniform(0, 1, (num, 3)), jnp.float32))


def dense_render(gaussians: Gaussians, camera: Camera, chunk: int = 1024) -> jax.Array:
  """The naive approach: every Gaussian at every pixel, in depth order, no tiles and no early stop.

  Gaussians are visited in chunks of `chunk` under `lax.scan` (with `jax.checkpoint`, so backward memory
  stays bounded); each step evaluates a (H*W, chunk) block of alphas and blends it front to back.
  """
  projected = project(gaussians, camera)
  num = gaussians.num
  padded = -(-num // chunk) * chunk
  order = jnp.argsort(jnp.where(projected.visible, projected.depths, jnp.inf))
  pad = lambda x: jnp.pad(x[order], [(0, padded - num)] + [(0, 0)] * (x.ndim - 1))
  opacities = jnp.where(projected.visible, projected.opacities, 0.0)
  blocks = [pad(x).reshape((padded // chunk, chunk) + x.shape[1:])
            for x in (projected.means2d, projected.conics, opacities, gaussians.colors)]
  rows, cols = jnp.meshgrid(jnp.arange(camera.height) + 0.5, jnp.arange(camera.width) + 0.5, indexing="ij")
  pixels = jnp.stack([cols.ravel(), rows.ravel()], -1)

  @jax.checkpoint
  def step(carry, block):
    transmittance, image = carry
    means2d, conics, opacity, colors = block
    delta = means2d[None] - pixels[:, None]
    power = (-0.5 * (conics[:, 0] * delta[..., 0] ** 2 + conics[:, 2] * delta[..., 1] ** 2)
             - conics[:, 1] * delta[..., 0] * delta[..., 1])
    alpha = jnp.minimum(0.99, opacity * jnp.exp(jnp.minimum(power, 0.0)))
    alpha = jnp.where((power <= 0) & (alpha >= 1 / 255), alpha, 0.0)
    prefix = jnp.cumprod(1.0 - alpha, axis=1)
    exclusive = jnp.concatenate([jnp.ones_like(prefix[:, :1]), prefix[:, :-1]], 1)
    image = image + (alpha * exclusive * transmittance[:, None]) @ colors
    return (transmittance * prefix[:, -1], image), None

  init = (jnp.ones(pixels.shape[0]), jnp.zeros((pixels.shape[0], 3)))
  (_, image), _ = jax.lax.scan(step, init, blocks)
  return image.reshape(camera.height, camera.width, 3)


def _planned_bytes(fn, *args) -> int:
  memory = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
             - memory.alias_size_in_bytes)


def _time_ms(fn, args, repeats: int) -> float:
  compiled = jax.jit(fn)
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def benchmark(num: int, size: int, repeats: int, max_dense_backward: int) -> dict:
  gaussians = random_scene(num)
  camera = Camera.from_fov(jnp.eye(4), size, size, fov_x_deg=60.0)
  capacity = capacity_for(int(count_intersections(gaussians, camera)))
  tiled = lambda g: rasterize(g, camera, capacity=capacity).image
  dense = lambda g: dense_render(g, camera)
  loss = lambda render: jax.grad(lambda g: jnp.sum(render(g) ** 2))
  row = dict(num=num, size=size, pairs=int(count_intersections(gaussians, camera)))
  for name, render in (("tiled", tiled), ("dense", dense)):
    row[f"{name}_mem"] = _planned_bytes(loss(render), gaussians)
    row[f"{name}_fwd"] = _time_ms(render, (gaussians,), repeats)
    run_backward = name == "tiled" or num <= max_dense_backward
    row[f"{name}_bwd"] = _time_ms(loss(render), (gaussians,), repeats) if run_backward else None
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="N = 1e3, 1e4 at 256x256 only")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--max-dense-backward", type=int, default=10_000,
                      help="skip the dense fwd+bwd above this N (it is slow on small CPUs)")
  args = parser.parse_args()
  sizes = (256,) if args.quick else (256, 512)
  nums = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}), {jax.device_count()} device(s), "
        f"host {platform.machine()}, jax {jax.__version__}")
  print("| N | size | pairs | tiled fwd ms | tiled fwd+bwd ms | tiled fwd+bwd MiB | dense fwd ms | dense fwd+bwd ms "
        "| dense fwd+bwd MiB | speed-up fwd+bwd |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  fmt = lambda v: "not run" if v is None else f"{v:.1f}"
  for size in sizes:
    for num in nums:
      row = benchmark(num, size, args.repeats, args.max_dense_backward)
      speedup = "-" if row["dense_bwd"] is None else f"{row['dense_bwd'] / row['tiled_bwd']:.1f}x"
      print(f"| {num:.0e} | {size}x{size} | {row['pairs']} | {fmt(row['tiled_fwd'])} | {fmt(row['tiled_bwd'])} "
            f"| {row['tiled_mem'] / 2**20:.0f} | {fmt(row['dense_fwd'])} | {fmt(row['dense_bwd'])} "
            f"| {row['dense_mem'] / 2**20:.0f} | {speedup} |", flush=True)


if __name__ == "__main__":
  main()
