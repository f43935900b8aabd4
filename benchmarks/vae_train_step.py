"""VAE training step on CPU: the chunk scan's gradient against `python_frame_loop`, side by side in one run.

    python benchmarks/vae_train_step.py                       # 64x64, 9 and 17 frames, batch 2
    python benchmarks/vae_train_step.py --frames 17 --channels 32 64 64 64

`wonderland train vae` traces its loss under `models.vae.python_frame_loop` (the same computation, a Python
loop over the frame chunks instead of lax.scan) because XLA's CPU gradient of the scan is an order of magnitude
slower. Prints one Markdown table: seconds per jitted value-and-gradient of the autoencoder loss (encode, a
posterior sample, decode, MSE) for each frame loop, after a warm-up call (compile seconds listed apart).
Random weights and inputs (no downloads).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
from flax import nnx

from wonderland_jax.models.vae import CogVideoXVAE, VAEConfig, python_frame_loop


def _timed(fn, *args, repeats: int) -> tuple[float, float]:
  started = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_seconds = time.perf_counter() - started
  started = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn(*args))
  return compile_seconds, (time.perf_counter() - started) / repeats


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, nargs="+", default=[9, 17],
                      help="1 + 8k: an odd number of latent frames, which CogVideoX's decoder gives back whole")
  parser.add_argument("--size", type=int, default=64, help="height = width in pixels")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--channels", type=int, nargs=4, default=[16, 32, 32, 32], help="block_out_channels")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  if any(frames < 1 or (frames - 1) % 8 for frames in args.frames):
    parser.error(f"--frames {args.frames}: each must be 1 + 8k (9, 17, 25, ...)")
  config = VAEConfig.from_diffusers(dict(block_out_channels=tuple(args.channels), layers_per_block=1,
                                         norm_num_groups=4, latent_channels=16, temporal_compression_ratio=4,
                                         sample_height=args.size, sample_width=args.size))
  vae = CogVideoXVAE(config, rngs=nnx.Rngs(0))

  def loss(model, video, key):
    return jnp.mean((model.decode(model.encode(video).sample(key)) - video) ** 2)

  def loss_loop(model, video, key):
    with python_frame_loop():
      return loss(model, video, key)

  print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} {jax.default_backend()} "
        f"device(s); block_out_channels {tuple(args.channels)}, {args.size}x{args.size}, batch {args.batch}\n")
  print("| frames | scan: s / step | python loop: s / step | speed-up | compile s (scan / loop) |")
  print("|---:|---:|---:|---:|---:|")
  for frames in args.frames:
    video = jax.random.uniform(jax.random.key(frames), (args.batch, frames, args.size, args.size, 3)) * 2 - 1
    key = jax.random.key(1)
    scan_compile, scan = _timed(nnx.jit(nnx.value_and_grad(loss)), vae, video, key, repeats=args.repeats)
    loop_compile, loop = _timed(nnx.jit(nnx.value_and_grad(loss_loop)), vae, video, key, repeats=args.repeats)
    print(f"| {frames} | {scan:.2f} | {loop:.2f} | {scan / loop:.1f}x | {scan_compile:.0f} / {loop_compile:.0f} |",
          flush=True)


if __name__ == "__main__":
  main()
