"""The embedded default (`wonderland demo`): everything runs on a laptop CPU in a few minutes, no downloads.

Until the image-to-scene pipeline lands, the demo exercises the rasterizer end to end: it renders a
procedural scene from an orbit of views, recovers a Gaussian scene from those images by gradient descent
through the differentiable rasterizer, and writes `scene.ply`, `flythrough.mp4`, `views.png` and a report
(`report.md`, `report.json`) with the PSNR along the optimisation and on held-out views.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wonderland_jax.camera import Camera, look_at, make_trajectory
from wonderland_jax.demo.procedural import procedural_scene
from wonderland_jax.io_utils import atomic_path, write_json, write_png, write_video
from wonderland_jax.progress import progress
from wonderland_jax.splat import Gaussians, capacity_for, count_intersections, rasterize
from wonderland_jax.splat.flythrough import render_frames
from wonderland_jax.splat.ply import save_ply

logger = logging.getLogger(__name__)

BACKGROUND = (1.0, 1.0, 1.0)


def psnr(prediction, target) -> jax.Array:
  """Peak signal-to-noise ratio (dB) of images in [0, 1]."""
  return -10.0 * jnp.log10(jnp.mean((prediction - target) ** 2))


def _views(num_views: int, size: int) -> Camera:
  start = look_at(np.array([0.0, -1.3, -3.2]), np.zeros(3))
  return make_trajectory("orbit", num_views, start_c2w=start, radius=float(np.linalg.norm([1.3, 3.2])),
                         degrees=360.0 * (num_views - 1) / num_views, width=size, height=size, fov_deg=50.0)


def _initial_params(rng, num: int) -> dict:
  return dict(means=jnp.asarray(rng.uniform(-1.0, 1.0, (num, 3)) * [1.2, 0.6, 1.2], jnp.float32),
              log_scales=jnp.full((num, 3), np.log(0.05), jnp.float32),
              quats=jnp.asarray(rng.normal(size=(num, 4)), jnp.float32),
              opacity_logits=jnp.zeros((num,), jnp.float32),
              color_logits=jnp.zeros((num, 3), jnp.float32))


def to_gaussians(params: dict) -> Gaussians:
  return Gaussians(means=params["means"], quats=params["quats"], scales=jnp.exp(params["log_scales"]),
                   opacities=jax.nn.sigmoid(params["opacity_logits"]), colors=jax.nn.sigmoid(params["color_logits"]))


def run_demo(out_dir: Path, *, steps: int = 300, seed: int = 0, num_gaussians: int = 2000, size: int = 64,
             views_per_step: int = 4) -> dict:
  """Runs the demo into `out_dir`; returns the report (also written as report.json / report.md)."""
  started = time.monotonic()
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  background = jnp.asarray(BACKGROUND)
  target_scene = procedural_scene(seed)
  cameras = _views(20, size)
  held_out = np.arange(2, 20, 5)
  train = np.setdiff1d(np.arange(20), held_out)
  targets = rasterize(target_scene, cameras, background=background).image
  logger.info("demo: rendered %d views of a %d-Gaussian procedural scene at %dx%d", len(cameras),
              target_scene.num, size, size)

  labels = dict(means="means", log_scales="scales", quats="quats", opacity_logits="opacity",
                color_logits="color")
  rates = dict(means=3e-3, scales=1e-2, quats=1e-2, opacity=5e-2, color=5e-2)
  optimizer = optax.multi_transform(
      {name: optax.adam(optax.cosine_decay_schedule(rate, steps, 0.1)) for name, rate in rates.items()}, labels)
  params = _initial_params(rng, num_gaussians)
  opt_state = optimizer.init(params)

  def loss_fn(params, view_cameras, view_targets, capacity):
    images = rasterize(to_gaussians(params), view_cameras, background=background, capacity=capacity).image
    return jnp.mean((images - view_targets) ** 2)

  @jax.jit(static_argnames="capacity")
  def train_step(params, opt_state, view_cameras, view_targets, capacity):
    loss, grads = jax.value_and_grad(loss_fn)(params, view_cameras, view_targets, capacity)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  for step in progress(range(1, steps + 1), desc="demo: fitting Gaussians"):
    batch = rng.choice(train, views_per_step, replace=False)
    view_cameras, view_targets = cameras[batch], targets[batch]
    # The pair buffer follows the scene as it changes; a new power-of-two size recompiles the step.
    capacity = capacity_for(int(count_intersections(to_gaussians(params), view_cameras)))
    params, opt_state, loss = train_step(params, opt_state, view_cameras, view_targets, capacity)
    history.append(dict(step=step, loss=float(loss), psnr=float(-10 * np.log10(float(loss)))))

  fitted = to_gaussians(params)
  renders = rasterize(fitted, cameras, background=background).image
  per_view = [float(psnr(renders[i], targets[i])) for i in range(len(cameras))]
  save_ply(out_dir / "scene.ply", fitted)
  flythrough = _views(48, 2 * size)
  write_video(out_dir / "flythrough.mp4", render_frames(fitted, flythrough, background=background,
                                                        desc="demo: flythrough"), fps=24)
  comparison = np.concatenate([np.concatenate([targets[i], renders[i]], 0) for i in held_out], 1)
  write_png(out_dir / "views.png", np.asarray(comparison))

  report = dict(
      steps=steps, num_gaussians=num_gaussians, image_size=size, views_per_step=views_per_step,
      train_views=train.tolist(), held_out_views=held_out.tolist(),
      initial_psnr=history[0]["psnr"] if history else None,
      final_train_psnr=float(np.mean([per_view[i] for i in train])),
      held_out_psnr=float(np.mean([per_view[i] for i in held_out])),
      seconds=time.monotonic() - started, device=str(jax.devices()[0].platform), history=history)
  write_json(out_dir / "report.json", report)
  _write_markdown_report(out_dir / "report.md", report)
  logger.info("demo: held-out PSNR %.2f dB, train PSNR %.2f dB (%.0fs); outputs in %s", report["held_out_psnr"],
              report["final_train_psnr"], report["seconds"], out_dir)
  return report


def _write_markdown_report(path: Path, report: dict) -> None:
  lines = ["# wonderland demo: scene recovery through the differentiable rasterizer", "",
           f"{report['num_gaussians']} Gaussians fitted to {len(report['train_views'])} views "
           f"({report['image_size']}x{report['image_size']}) of a procedural scene, {report['steps']} Adam steps, "
           f"{report['views_per_step']} views per step, {report['seconds']:.0f}s on {report['device']}.", "",
           f"- held-out views {report['held_out_views']}: PSNR {report['held_out_psnr']:.2f} dB",
           f"- training views: PSNR {report['final_train_psnr']:.2f} dB", "",
           "| step | loss (MSE) | PSNR (dB, batch) |", "|---:|---:|---:|"]
  history = report["history"]
  shown = [h for h in history if h["step"] == 1 or h["step"] % max(1, len(history) // 20) == 0]
  lines += [f"| {h['step']} | {h['loss']:.5f} | {h['psnr']:.2f} |" for h in shown]
  with atomic_path(path) as temporary:
    temporary.write_text("\n".join(lines) + "\n")
