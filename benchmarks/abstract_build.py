"""Abstract builds (nothing allocated) of every config's training step: plain `nnx.eval_shape` vs
`nn.abstract.abstract_build` (the same build without JAX's quadratic tracer-message walk), side by side.

    python benchmarks/abstract_build.py                       # every file in configs/
    python benchmarks/abstract_build.py --configs camera_dit_5b lalrm_lowres

Prints one Markdown table: seconds to build each config's model, optimizer state and step abstractly (the
work of `wonderland plan` before lowering, and of `checkpoints.load` before reading), with both builders, and
the parameter counts (equal by construction: the table checks it).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from unittest import mock

from flax import nnx

from wonderland_jax.nn import abstract
from wonderland_jax.train import loop
from wonderland_jax.train.config import REPO_CONFIGS, load_config
from wonderland_jax.train.tasks import make_task, planning_config, task_name


def _plain_build(build):
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(build)


def _time(name: str, builder) -> tuple[float, int]:
  config = load_config(name)
  model = task_name(config)
  planned = planning_config(model, config)
  task = make_task(model, planned)
  with mock.patch.object(loop, "abstract_build", builder):
    start = time.perf_counter()
    built = loop.setup(task, planned, abstract=True)
    seconds = time.perf_counter() - start
  return seconds, built.num_trainable + built.num_frozen


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="*", default=sorted(path.stem for path in REPO_CONFIGS.glob("*.py")),
                      help="config names under configs/ (default: all)")
  args = parser.parse_args()
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
  print("| config | params | nnx.eval_shape (s) | abstract_build (s) | speed-up |")
  print("|---|---:|---:|---:|---:|")
  for name in args.configs:
    plain, count = _time(name, _plain_build)
    fast, fast_count = _time(name, abstract.abstract_build)
    if count != fast_count:
      raise SystemExit(f"{name}: the builders disagree on the parameter count ({count} vs {fast_count})")
    print(f"| {name} | {count / 1e6:,.1f}M | {plain:.1f} | {fast:.1f} | {plain / fast:.0f}x |", flush=True)


if __name__ == "__main__":
  main()
