"""The camera-guided transformer's training step: the tiny config's step time on this machine, and the full-size
(CogVideoX-5B-I2V + dual branch, configs/camera_dit_5b.py) step planned ahead of time on a fake mesh.

    python benchmarks/camera_dit.py                       # tiny step time + the 5B plan on 8 fake devices (FSDP)
    python benchmarks/camera_dit.py --skip-plan --steps 50
    python benchmarks/camera_dit.py --plan-mesh fsdp=64 --plan-batch 64

Tiny: configs/camera_dit_tiny.py (random frozen base, synthetic clips), the jitted step timed over `--steps`
steps after two warm-up steps; the table also gives the trainable / frozen parameter counts and the bytes of
the optimizer state (Adam's moments exist for the branch params only). Plan: `wonderland plan` (XLA's
per-device memory and FLOPs of the compiled SPMD step; nothing is allocated; see train/plan.py). With a GPU
the real full-size step time comes from `wonderland train camera-dit --config configs/camera_dit_5b.py
--config.base.pipeline="" --config.train.steps=5` (random weights) and its steps/s line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from memory import PeakMemory  # benchmarks/memory.py (scripts run from benchmarks/)

from wonderland_jax.train.config import load_config
from wonderland_jax.train.loop import setup
from wonderland_jax.train.tasks import make_task


def tiny_step(steps: int) -> dict:
  config = load_config("camera_dit_tiny", [])
  task = make_task("camera-dit", config)
  prepared = setup(task, config)
  step = jax.jit(prepared.step, donate_argnums=0)
  iterator = task.make_iterator(config)
  batches = [next(iterator) for _ in range(steps + 2)]
  state = prepared.state
  memory = PeakMemory()
  with memory:
    for batch in batches[:2]:
      state, metrics = step(state, prepared.frozen, prepared.rest, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[2:]:
      state, metrics = step(state, prepared.frozen, prepared.rest, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
  nbytes = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {"seconds_per_step": seconds, "batch": int(config.train.batch_size), "trainable": prepared.num_trainable,
          "frozen": prepared.num_frozen, "optimizer_bytes": nbytes(state.opt_state),
          "trainable_bytes": nbytes(state.params), "frozen_bytes": nbytes(prepared.frozen),
          "peak_rss_gib": memory.peak / 2 ** 30}


def plan(mesh: str, batch: int) -> dict:
  with tempfile.TemporaryDirectory() as directory:
    out = os.path.join(directory, "plan.json")
    # Extrapolated from 2- and 4-block compiles (a 42-block CPU compile takes over 25 minutes), memory-efficient
    # attention as fused kernels give (see docs/benchmarks.md for what the figures are worth).
    command = [sys.executable, "-m", "wonderland_jax.cli", "plan", "--config", "camera_dit_5b", "--mesh", mesh,
               "--json", out, "--extrapolate", "2,4", "--config.base.attention=chunked",
               f"--config.train.batch_size={batch}"]
    subprocess.run(command, check=True)
    with open(out) as handle:
      return json.load(handle)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--skip-plan", action="store_true")
  parser.add_argument("--plan-mesh", default="fsdp=8")
  parser.add_argument("--plan-batch", type=int, default=8, help="global batch of the planned step")
  args = parser.parse_args()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}")
  tiny = tiny_step(args.steps)
  print("\n| tiny config (CPU) | value |\n|---|---|")
  print(f"| step time (batch {tiny['batch']}, 9 x 32 x 32 clips) | {tiny['seconds_per_step'] * 1e3:.0f} ms |")
  print(f"| params: trainable / frozen | {tiny['trainable']:,} / {tiny['frozen']:,} |")
  print(f"| optimizer state | {tiny['optimizer_bytes'] / 2**20:.2f} MiB = "
        f"{tiny['optimizer_bytes'] / tiny['trainable_bytes']:.2f} x the trainable params "
        f"(frozen params: {tiny['frozen_bytes'] / 2**20:.2f} MiB, no optimizer state) |")
  print(f"| peak RSS above start | {tiny['peak_rss_gib']:.2f} GiB |")
  if args.skip_plan:
    return
  start = time.perf_counter()
  result = plan(args.plan_mesh, args.plan_batch)
  gib = 2 ** 30
  print(f"\n| CogVideoX-5B-I2V + dual branch, planned on {result['devices']} fake devices ({args.plan_mesh}) | value |")
  print("|---|---|")
  print(f"| global batch (49 x 480 x 720 clips) | {result['global_batch']} |")
  print(f"| params: trainable / frozen | {result['num_trainable']:,} / {result['num_frozen']:,} |")
  print(f"| per device: arguments / temporaries / peak | {result['argument_bytes'] / gib:.1f} / "
        f"{result['temp_bytes'] / gib:.1f} / {result['peak_bytes'] / gib:.1f} GiB |")
  print(f"| FLOPs per step per device | {result['flops']:.3e} |")
  print(f"| step time at {result['mfu']:.0%} MFU on {result['accelerator']} | {result['step_seconds']:.1f} s |")
  print(f"| method | {result['method']} |")
  print(f"| plan compile time (CPU) | {time.perf_counter() - start:.0f} s |")


if __name__ == "__main__":
  main()
