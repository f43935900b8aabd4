"""Does the tiny LaLRM learn? Trains configs/lalrm_tiny.py on the synthetic dataset and prints held-out
novel-view metrics before and after training, against the mean-colour baseline, plus step time and memory.

    python benchmarks/lalrm_learning.py --workdir runs/lalrm_tiny            # trains (or resumes), ~25 min on 2 cores
    python benchmarks/lalrm_learning.py --workdir runs/lalrm_tiny --config.train.steps=300
    python benchmarks/lalrm_learning.py --workdir runs/x --lpips-backbone vgg16.pth --lpips-heads vgg.pth

Held-out: `data.num_eval_scenes` synthetic scenes from `data.eval_seed` (never trained on), every supervision
view (seen and unseen). The baseline predicts, at every pixel of every target, the mean colour of the clip's
seen frames. LPIPS needs the public weight files (torchvision VGG-16 state_dict and the lpips package's
`vgg.pth` heads), passed by path; without them it is left out. Writes `learning_curve.png` (train PSNR per
log step and held-out PSNR per evaluation, from metrics.jsonl) into the workdir and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from memory import PeakMemory  # benchmarks/memory.py (scripts run from benchmarks/)

from wonderland_jax.train.config import load_config
from wonderland_jax.train.lalrm import LaLRMTrainee, eval_clips, evaluate_reconstruction, lalrm_task
from wonderland_jax.train.loop import train


def learning_curve(workdir: Path) -> Path:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_points = [(line["step"], line["psnr"]) for line in lines if "psnr" in line]
  eval_points = [(line["step"], line["eval/psnr"]) for line in lines if "eval/psnr" in line]
  baseline = [line["eval/baseline_psnr"] for line in lines if "eval/baseline_psnr" in line]
  figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
  axis.plot(*zip(*train_points), label="train PSNR (batch mean)", linewidth=1)
  if eval_points:
    axis.plot(*zip(*eval_points), "o-", label="held-out PSNR")
  if baseline:
    axis.axhline(baseline[-1], color="gray", linestyle="--", label="mean-colour baseline")
  axis.set_xlabel("step")
  axis.set_ylabel("PSNR (dB)")
  axis.set_title("tiny LaLRM on the synthetic dataset")
  axis.legend()
  axis.grid(alpha=0.3)
  figure.tight_layout()
  path = workdir / "learning_curve.png"
  figure.savefig(path)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="lalrm_tiny")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--lpips-backbone", default=None, help="torchvision VGG-16 state_dict (.pth / .safetensors)")
  parser.add_argument("--lpips-heads", default=None, help="the lpips package's vgg.pth linear heads")
  args, overrides = parser.parse_known_args(argv)
  logging.basicConfig(level=logging.INFO, format="[bench] %(message)s", stream=sys.stderr, force=True)
  for noisy in ("jax", "absl", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  config = load_config(args.config, overrides)
  lpips_model = None
  if args.lpips_backbone:
    from wonderland_jax.models import vgg  # noqa: PLC0415
    lpips_model = vgg.load_lpips(args.lpips_backbone, args.lpips_heads, net="vgg")
  held_out = eval_clips(config)

  initial = LaLRMTrainee(config, nnx.Rngs(int(config.seed)))
  before, _ = evaluate_reconstruction(initial.lalrm, initial.vae, held_out, config, lpips_model)
  with PeakMemory() as memory:
    start = time.monotonic()
    result = train(lalrm_task(config), config, args.workdir)
    elapsed = time.monotonic() - start
  after, _ = evaluate_reconstruction(result.model.lalrm, result.model.vae, held_out, config, lpips_model)
  workdir = Path(args.workdir)
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  rates = [line["steps_per_second"] for line in lines if "steps_per_second" in line]
  curve = learning_curve(workdir)

  print(f"\nLaLRM tiny ({config.model.num_layers} x {config.model.hidden_size}, {config.data.num_frames} frames "
        f"{config.data.width}x{config.data.height}, batch {config.train.batch_size}, {result.step} steps); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
        f"{jax.default_backend()}\n")
  print(f"Held-out novel views: {len(held_out['target_images'])} unseen scenes x "
        f"{held_out['target_images'].shape[1]} views\n")
  names = ["psnr", "ssim"] + (["lpips"] if lpips_model is not None else [])
  print("| model | " + " | ".join(name.upper() for name in names) + " |")
  print("|---|" + "---|" * len(names))
  print("| mean-colour baseline | " + " | ".join(
      f"{before.get('baseline_' + name, float('nan')):.3f}" if name != "lpips" else "n/a" for name in names) + " |")
  print("| LaLRM before training | " + " | ".join(f"{before[name]:.3f}" for name in names) + " |")
  print("| LaLRM after training | " + " | ".join(f"{after[name]:.3f}" for name in names) + " |")
  gain = after["psnr"] - before["baseline_psnr"]
  print(f"\nPSNR gain over the baseline: {gain:+.2f} dB (target >= +5 dB)")
  if rates:
    print(f"Training: {np.median(rates):.2f} steps/s (median of log intervals; {1 / np.median(rates):.2f} s/step), "
          f"this call {elapsed:.0f} s, peak RSS {(memory.base + memory.peak) / 2**30:.2f} GiB")
  print(f"Learning curve: {curve}")


if __name__ == "__main__":
  main()
