"""Single image to 3D scene, per stage: time and memory of `wonderland generate`'s stages on one device.

    python benchmarks/pipeline.py                                   # the shipped demo models (CPU: seconds)
    python benchmarks/pipeline.py --model checkpoints/cogvideox-5b-i2v --random-branch configs/camera_dit_5b.py \
        --random-lalrm configs/lalrm_highres.py --frames 49 --size 720x480 --steps 50      # full size (a GPU)

Stages (each run twice: 'cold' includes tracing and compiling, 'warm' is the same call again):
  loading         checkpoints -> device (cold only);
  sampling        camera-guided latents: `--steps` DiT steps, each a batch of 2 (classifier-free guidance);
  reconstruction  the LaLRM on the latents -> Gaussians;
  decoding        the VAE decoder -> frames (not needed for the scene; the paper's ~5 min figure includes it);
  rendering       the rasterizer along the F input cameras (`render_frames` compiles its renderer per call, so its
                  'warm' time includes that compile).
Memory: the peak resident memory of the process above its level before the stage (host) and, on accelerators,
the device allocator's peak (`memory_stats()['peak_bytes_in_use']`, cumulative over the run).

--random-branch / --random-lalrm build random models of those configs' shapes (the branch with its zero-initialised
output layers perturbed, so the branch computes as much as a trained one) and save them to a temporary folder:
timing the full-size pipeline needs only the converted CogVideoX-5B-I2V.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from memory import PeakMemory  # benchmarks/memory.py (scripts run from benchmarks/)

from wonderland_jax import checkpoints
from wonderland_jax.camera import make_trajectory
from wonderland_jax.pipeline import WonderlandPipeline, generate_scene
from wonderland_jax.splat.flythrough import render_frames


def _device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def random_branch(model_dir: str, config_path: str, out: Path) -> Path:
  """A camera branch of `config_path`'s camera settings on the pipeline's transformer, random (non-zero)."""
  from wonderland_jax.models import camera_dit  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  config = load_config(config_path, [])
  base = checkpoints.load(Path(model_dir) / "transformer")
  model = camera_dit.CameraDiT(base, camera_dit.CameraConfig.from_dict(config.camera.to_dict()), rngs=nnx.Rngs(0))
  branch = nnx.state(model, camera_dit.BRANCH)
  keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(branch))))
  nnx.update(model, jax.tree.map(lambda x: x + 0.01 * jax.random.normal(next(keys), x.shape, x.dtype), branch))
  return camera_dit.save_branch(out / "branch", model, metadata={"trained_with": config.to_dict()})


def random_lalrm(model_dir: str, config_path: str, out: Path) -> Path:
  """A random LaLRM of `config_path`'s model settings, reading the pipeline's VAE latents."""
  from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig  # noqa: PLC0415
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  config = load_config(config_path, [])
  vae = checkpoints.read_description(Path(model_dir) / "vae")[1]
  lalrm_config = LaLRMConfig.from_dict(config.model.to_dict(), latent_channels=int(vae["latent_channels"]))
  return checkpoints.save(out / "lalrm", LaLRM(lalrm_config, rngs=nnx.Rngs(0)), kind="lalrm",
                          config=lalrm_config.to_dict())


def run(args: argparse.Namespace) -> list[dict]:
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    model, branch, lalrm = args.model, args.branch, args.lalrm
    if model is None:
      from wonderland_jax.demo import weights_directory  # noqa: PLC0415
      weights = weights_directory()
      model, branch, lalrm = weights / "pipeline", branch or weights / "branch", lalrm or weights / "lalrm"
    if args.random_branch:
      branch = random_branch(str(model), args.random_branch, Path(scratch))
    if args.random_lalrm:
      lalrm = random_lalrm(str(model), args.random_lalrm, Path(scratch))
    if branch is None or lalrm is None:
      raise SystemExit("with --model, give --branch (or --random-branch) and --lalrm (or --random-lalrm)")
    memory = PeakMemory()
    start = time.perf_counter()
    with memory:
      models = WonderlandPipeline.load(model, branch, lalrm)
    rows.append(dict(stage="loading", run="cold", seconds=time.perf_counter() - start, host_gib=memory.peak / 2 ** 30,
                     device_gib=None))
    height, width = (args.size[1], args.size[0]) if args.size else models.default_size
    frames = args.frames or int(models.video.pipeline.transformer.config.sample_frames)
    image = np.random.default_rng(0).uniform(0, 1, (height, width, 3)).astype(np.float32)
    cameras = make_trajectory("orbit", frames, width=width, height=height)
    for label in ("cold", "warm"):
      with memory:
        gaussians, extras = generate_scene(models, image, cameras, "", key=jax.random.key(0), num_frames=frames,
                                           num_inference_steps=args.steps, decode_video=True)
      seconds = dict(extras["seconds"])
      start = time.perf_counter()
      for _ in render_frames(gaussians, extras["cameras"]):
        pass
      seconds["rendering"] = time.perf_counter() - start
      peak = _device_peak()
      for stage in ("sampling", "reconstruction", "decoding", "rendering"):
        rows.append(dict(stage=stage, run=label, seconds=seconds[stage], host_gib=memory.peak / 2 ** 30,
                         device_gib=None if peak is None else peak / 2 ** 30))
      rows.append(dict(stage="total (no loading)", run=label, seconds=sum(seconds.values()), host_gib=None,
                       device_gib=None))
    context = dict(frames=frames, size=f"{width}x{height}", steps=args.steps, gaussians=int(gaussians.num),
                   device=jax.devices()[0].device_kind, host=platform.processor() or platform.machine())
  return rows, context


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None, help="converted pipeline (default: the shipped demo models)")
  parser.add_argument("--branch", default=None)
  parser.add_argument("--lalrm", default=None)
  parser.add_argument("--random-branch", default=None, help="config file: time a random branch of its shape")
  parser.add_argument("--random-lalrm", default=None, help="config file: time a random LaLRM of its shape")
  parser.add_argument("--frames", type=int, default=None, help="video frames (default: the transformer's)")
  parser.add_argument("--size", type=lambda text: tuple(int(v) for v in text.split("x")), default=None,
                      help="WIDTHxHEIGHT (default: the model's)")
  parser.add_argument("--steps", type=int, default=50, help="sampling steps")
  parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
  args = parser.parse_args()
  rows, context = run(args)
  if args.json:
    json.dump(dict(context=context, rows=rows), sys.stdout, indent=1)
    return
  describe = lambda value, digits: "-" if value is None else f"{value:.{digits}f}"
  sys.stdout.write(f"pipeline: {context}\n\n| stage | run | seconds | host peak GiB | device peak GiB |\n"
                   "|---|---|---:|---:|---:|\n")
  for row in rows:
    sys.stdout.write(f"| {row['stage']} | {row['run']} | {row['seconds']:.2f} | {describe(row['host_gib'], 2)} | "
                     f"{describe(row['device_gib'], 2)} |\n")


if __name__ == "__main__":
  main()
