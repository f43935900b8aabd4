"""CogVideoX VAE benchmark: our Flax port (jit) vs diffusers (PyTorch), CPU, side by side in one run.

    python benchmarks/vae.py                       # mid-size config, 17 and 49 frames at 128x128
    python benchmarks/vae.py --full-5b --frames 49 --height 480 --width 720 --dtype bfloat16   # on a GPU

Prints one Markdown table: encode and decode wall time (median of --repeats after a warm-up) and peak
resident memory above the level before the call (sampled every 2 ms), for both implementations; for ours
also the memory XLA plans for the compiled program (temporaries). Random weights (no downloads).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from memory import PeakMemory  # benchmarks/memory.py (scripts run from benchmarks/)

from wonderland_jax.models.vae import CogVideoXVAE, VAEConfig

MID_SIZE = dict(block_out_channels=(64, 128, 128, 256), layers_per_block=2, norm_num_groups=32, latent_channels=16)
FULL_5B = dict(block_out_channels=(128, 256, 256, 512), layers_per_block=3, norm_num_groups=32, latent_channels=16)


def _measure(fn, repeats: int):
  fn()  # warm-up (and compile)
  times, peaks = [], []
  for _ in range(repeats):
    with PeakMemory() as memory:
      start = time.perf_counter()
      fn()
      times.append(time.perf_counter() - start)
    peaks.append(memory.peak)
  return 1e3 * statistics.median(times), max(peaks)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", type=int, nargs="+", default=[17, 49])
  parser.add_argument("--height", type=int, default=128)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--full-5b", action="store_true", help="the CogVideoX-5B(-I2V) VAE config")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--skip-diffusers", action="store_true")
  args = parser.parse_args()

  config = VAEConfig(**(FULL_5B if args.full_5b else MID_SIZE), dtype=args.dtype)
  model = CogVideoXVAE(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x).mean)
  decode = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))
  reference = None
  if not args.skip_diffusers:
    import torch  # noqa: PLC0415 (the reference is optional: --skip_diffusers)
    from diffusers import AutoencoderKLCogVideoX  # noqa: PLC0415 (the reference is optional: --skip_diffusers)

    torch.set_grad_enabled(False)
    reference = AutoencoderKLCogVideoX(**{k: v for k, v in config.to_dict().items() if k != "dtype"}).eval()
    if args.dtype == "bfloat16":
      reference = reference.to(torch.bfloat16)

  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); host {platform.machine()}, {os.cpu_count()} cpus; "
        f"jax {jax.__version__}; config {'5B' if args.full_5b else 'mid-size'} {config.block_out_channels}, "
        f"{args.height}x{args.width}, {args.dtype}")
  print("| frames | op | ours ms | ours peak MiB (RSS) | ours XLA temp MiB | diffusers ms | diffusers peak MiB (RSS) "
        "| time ratio ours/diffusers |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  rng = np.random.default_rng(0)
  for frames in args.frames:
    video = rng.uniform(-1, 1, (1, frames, args.height, args.width, 3)).astype(np.float32)
    latent_frames = 1 + (frames - 1) // 4
    factor = config.spatial_compression
    latents = rng.normal(size=(1, latent_frames, args.height // factor, args.width // factor, 16)).astype(np.float32)
    for op, fn, x in (("encode", encode, video), ("decode", decode, latents)):
      x_jax = jnp.asarray(x)
      ours_ms, ours_peak = _measure(lambda: jax.block_until_ready(fn(state, x_jax)), args.repeats)
      planned = fn.lower(state, x_jax).compile().memory_analysis().temp_size_in_bytes
      ref_ms = ref_peak = None
      if reference is not None:
        x_torch = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).to(next(reference.parameters()).dtype)
        call = ((lambda: reference.encode(x_torch).latent_dist.mean) if op == "encode"
                else (lambda: reference.decode(x_torch).sample))
        ref_ms, ref_peak = _measure(call, args.repeats)
      fmt = lambda v, scale=1.0: "-" if v is None else f"{v / scale:.0f}"
      ratio = "-" if ref_ms is None else f"{ours_ms / ref_ms:.2f}"
      print(f"| {frames} | {op} | {ours_ms:.0f} | {ours_peak / 2**20:.0f} | {planned / 2**20:.0f} | {fmt(ref_ms)} "
            f"| {fmt(ref_peak, 2**20)} | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
