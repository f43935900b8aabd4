"""Does the method work? Issue 17's measurements of a set of Wonderland weights on held-out synthetic scenes.

    python benchmarks/mini_wonderland.py                                   # the shipped demo weights
    python benchmarks/mini_wonderland.py --weights runs/mini/weights --scenes 16 --markdown docs/mini.md
    python benchmarks/mini_wonderland.py --weights previous=wonderland_jax/demo/weights --weights new=runs/w

`--weights` is a folder with `pipeline/`, `branch/`, `lalrm/` (`python -m wonderland_jax.demo.build`'s output);
several (`label=folder`) give one row each. The clips are the held-out scenes of the LaLRM's training data config
(synthetic scenes of its `eval_seed`, clip i drawn with `clip_rng(eval_seed, i)`: the same in every run), its
first frame the image and its own path the trajectory. Per scene, each in PSNR (dB) against the ground truth:

  vae            the VAE's reconstruction (posterior mean) of the clip, every frame
  vae_input      the VAE's reconstruction of the input image alone (the image-conditioning reference)
  frame0         the generated video's frame 0 against the input (should be within 1 dB of vae_input)
  true_path      the video generated along the true path, frames 1..F-1
  mirrored_path  the video generated along the path mirrored left-right in the first camera's frame
                 (`camera.mirror_left_right`): if the camera is ignored it scores as true_path
  held_still     the input frame held still, frames 1..F-1
  lalrm_seen     the LaLRM on the clip's VAE latents, rendered at the clip's cameras, frames 1..F-1
  lalrm_unseen   the same scene rendered at the clip's unseen target views (cameras off the clip)
  flythrough     end to end: the LaLRM on the generated latents, rendered along the true path, frames 1..F-1

Prints a Markdown table of the means over scenes (and writes it with --markdown, the per-scene values with
--json). Sampling: --steps DDIM steps, guidance 1 (the demo's empty prompt), noise seed --seed + scene.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.eval import image_metrics
from wonderland_jax.train.vae import autoencode

COLUMNS = ("vae", "vae_input", "frame0", "true_path", "mirrored_path", "held_still", "lalrm_seen", "lalrm_unseen",
           "flythrough")


def psnr(prediction, target) -> float:
  """Mean over frames of the per-frame PSNR (dB) of (F, H, W, 3) images in [0, 1]."""
  return float(jnp.mean(image_metrics.psnr(jnp.asarray(prediction), jnp.asarray(target))))


def _autoencode(vae, frames) -> np.ndarray:
  return np.clip(np.asarray(autoencode(vae, jnp.asarray(frames)[None])[0]), 0, 1)


def held_out_clips(weights: Path, num_scenes: int) -> list[dict]:
  """The LaLRM's held-out clips (its training data config, forced to the synthetic source of its eval seed)."""
  from wonderland_jax.checkpoints import read_description  # noqa: PLC0415
  from wonderland_jax.data.pipeline import eval_clips  # noqa: PLC0415
  data = dict((read_description(weights / "lalrm")[2] or {}).get("trained_with", {}).get("data", {}))
  for key in ("root", "eval_root", "format", "images_dir"):
    data.pop(key, None)
  data.update(source="synthetic", num_eval_scenes=num_scenes, worker_threads=0)
  return eval_clips(data)


def measure(weights: Path, num_scenes: int, steps: int, seed: int) -> list[dict]:
  """The module docstring's figures for each held-out scene."""
  from wonderland_jax.camera import Camera, mirror_left_right  # noqa: PLC0415
  from wonderland_jax.models.vae import encode_frames  # noqa: PLC0415
  from wonderland_jax.pipeline import WonderlandPipeline, generate_scene  # noqa: PLC0415
  from wonderland_jax.reconstruct import reconstruct_latents  # noqa: PLC0415
  from wonderland_jax.splat.flythrough import render_frames  # noqa: PLC0415

  models = WonderlandPipeline.load(weights / "pipeline", weights / "branch", weights / "lalrm")
  vae = models.video.pipeline.vae
  background = np.zeros(3, np.float32)  # the synthetic scenes' and the LaLRM's training background
  rows = []
  for index, clip in enumerate(held_out_clips(weights, num_scenes)):
    truth = clip["frames"]
    num_frames, height, width, _ = truth.shape
    cameras = Camera.from_viewmat(clip["viewmats"], clip["intrinsics"], width, height)
    mirrored_c2w = mirror_left_right(np.linalg.inv(clip["viewmats"].astype(np.float64)))
    mirrored = Camera.from_viewmat(np.linalg.inv(mirrored_c2w).astype(np.float32), clip["intrinsics"], width, height)
    key = jax.random.key(seed + index)
    gaussians, extras = generate_scene(models, truth[0], cameras, "", key=key, num_inference_steps=steps,
                                       guidance_scale=1.0, decode_video=True)
    _, mirrored_frames = models.video.generate(truth[0], "", mirrored, num_inference_steps=steps,
                                               guidance_scale=1.0, key=key)
    flythrough = np.stack(list(render_frames(gaussians, extras["cameras"], background=background)))

    latents = encode_frames(vae, jnp.asarray(truth)[None])
    reference, rebased, scale = reconstruct_latents(models.lalrm, latents, cameras, scale_mode=models.scale_mode,
                                                    scale_target=models.scale_target)
    seen = np.stack(list(render_frames(reference, rebased, background=background)))
    unseen = ~clip["target_is_seen"]
    row = dict(scene=index)
    if unseen.any():
      viewmats = clip["target_viewmats"][unseen].copy()
      viewmats[:, :3, 3] *= scale  # into the LaLRM's units, as the clip's cameras (already re-based on the first)
      targets = Camera.from_viewmat(viewmats, clip["target_intrinsics"][unseen], width, height)
      row["lalrm_unseen"] = psnr(np.stack(list(render_frames(reference, targets, background=background))),
                                 clip["target_images"][unseen])
    generated = extras["frames"]
    row.update(vae=psnr(_autoencode(vae, truth), truth), vae_input=psnr(_autoencode(vae, truth[:1]), truth[:1]),
               frame0=psnr(generated[:1], truth[:1]), true_path=psnr(generated[1:], truth[1:]),
               mirrored_path=psnr(mirrored_frames[1:], truth[1:]),
               held_still=psnr(np.broadcast_to(truth[:1], truth[1:].shape), truth[1:]),
               lalrm_seen=psnr(seen[1:], truth[1:]), flythrough=psnr(flythrough[1:], truth[1:]))
    rows.append(row)
    print(f"  scene {index}: " + ", ".join(f"{name} {row[name]:.2f}" for name in COLUMNS if name in row), flush=True)
  return rows


def table(results: dict[str, list[dict]], header: str) -> str:
  lines = [header, "", "| weights | scenes | " + " | ".join(COLUMNS) + " | true - mirrored | true - still |"
           " flythrough - still |", "|---|---:|" + "---:|" * (len(COLUMNS) + 3)]
  for label, rows in results.items():
    mean = {name: float(np.mean([row[name] for row in rows if name in row])) if any(name in row for row in rows)
            else float("nan") for name in COLUMNS}
    cells = [f"{mean[name]:.2f}" for name in COLUMNS]
    cells += [f"{mean['true_path'] - mean['mirrored_path']:+.2f}", f"{mean['true_path'] - mean['held_still']:+.2f}",
              f"{mean['flythrough'] - mean['held_still']:+.2f}"]
    lines.append(f"| {label} | {len(rows)} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--weights", action="append", default=None,
                      help="[label=]folder with pipeline/, branch/, lalrm/ (repeatable; default: the shipped demo)")
  parser.add_argument("--scenes", type=int, default=16, help="held-out scenes (default 16)")
  parser.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
  parser.add_argument("--seed", type=int, default=0, help="sampling noise seed of scene 0 (default 0)")
  parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
  parser.add_argument("--json", type=Path, default=None, help="write the per-scene figures to this file")
  args = parser.parse_args()
  if args.scenes < 1 or args.steps < 1:
    parser.error(f"--scenes {args.scenes} / --steps {args.steps}: must be >= 1")
  from wonderland_jax.demo import weights_directory  # noqa: PLC0415
  entries = args.weights or [f"shipped demo={weights_directory()}"]
  results, started = {}, time.perf_counter()
  for entry in entries:
    label, _, folder = entry.rpartition("=")
    folder = Path(folder)
    if not all((folder / part).is_dir() for part in ("pipeline", "branch", "lalrm")):
      parser.error(f"--weights {entry}: {folder} needs pipeline/, branch/ and lalrm/")
    print(f"{label or folder}:", flush=True)
    results[label or str(folder)] = measure(folder, args.scenes, args.steps, args.seed)
  header = (f"PSNR (dB) on held-out synthetic scenes, {args.steps} sampling steps, seed {args.seed}; "
            f"{platform.processor() or platform.machine()}, {jax.default_backend()}, "
            f"{time.perf_counter() - started:.0f} s (`python benchmarks/mini_wonderland.py`)")
  text = table(results, header)
  print("\n" + text)
  if args.markdown:
    args.markdown.write_text(text, encoding="utf-8")
  if args.json:
    args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
  main()
