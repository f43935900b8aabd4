"""The embedded default (`wonderland demo`): the real Wonderland pipeline on tiny models shipped with the package.

    report = run_demo("demo_out", steps=25, seed=0)

No downloads, a few minutes on 2 CPU cores. The weights in `wonderland_jax/demo/weights/` (built by
`python -m wonderland_jax.demo.build`, see docs/demo.md and its MANIFEST.json) are a tiny converted CogVideoX
pipeline (its base transformer trained on the synthetic clips, the trained tiny VAE, a tiny T5 and tokenizer),
a camera branch and an LaLRM, all trained by `wonderland train` on the procedural synthetic dataset
(`wonderland_jax.data.synthetic`).

The input is a synthetic scene none of them trained or was evaluated on (dataset seed `SCENE_SEED`): its first
rendered frame is the image and its own camera path (9 cameras) the trajectory. Every stage of
`wonderland generate` runs (`pipeline.generate_scene`): T5 on the empty prompt, VAE encoding of the image,
camera-guided DiT sampling, the LaLRM on the latents, the VAE decoder, the rasterizer; then `.ply`, videos and a
report. Since the scene is synthetic, its ground truth along the path is known: the report gives the PSNR of
the generated scene's flythrough and of the decoded video against it (frames 1..F-1: those after the input),
for reference of the LaLRM on the ground-truth clip's own VAE latents (what the reconstruction gives without
the generation step), and as a baseline of the input frame held still.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from wonderland_jax.errors import WonderlandError

logger = logging.getLogger("wonderland_jax")

SCENE_SEED = 7  # the demo scenes' synthetic dataset seed: the models trained on seed 0 and were evaluated on 1
DEFAULT_STEPS = 25  # sampling steps
RENDER_SCALE = 4  # flythrough.mp4 / novel_orbit.mp4 at 4x the video size (the Gaussians render at any size)
NOVEL_FRAMES, NOVEL_DEGREES = 48, 60.0  # novel_orbit.mp4: from the input view around the scene's centre
OUTPUTS = ("scene.ply", "flythrough.mp4", "novel_orbit.mp4", "video.mp4", "ground_truth.mp4", "input.png",
           "latents.npz", "report.json", "report.md")


def weights_directory() -> Path:
  """The shipped weights (`pipeline/`, `branch/`, `lalrm/`, `MANIFEST.json`) inside the installed package."""
  from importlib import resources  # noqa: PLC0415
  directory = Path(str(resources.files("wonderland_jax.demo") / "weights"))
  if not (directory / "MANIFEST.json").is_file():
    raise WonderlandError(f"{directory}: the demo weights are missing (no MANIFEST.json); build them with "
                          "`python -m wonderland_jax.demo.build --workdir runs/demo --out wonderland_jax/demo/weights`")
  return directory


def demo_clip(data: dict[str, Any], scene: int = 0) -> dict[str, np.ndarray]:
  """Clip `scene` of the synthetic dataset `SCENE_SEED`, drawn as the training clips of the data config `data`
  (the camera branch's training data: size, frames, stride, pose normalisation): frames (F, H, W, 3) in [0, 1],
  viewmats (F, 4, 4) re-based on the first, intrinsics (F, 3, 3)."""
  from wonderland_jax.data.clips import clip_rng  # noqa: PLC0415
  from wonderland_jax.data.pipeline import make_clip_source  # noqa: PLC0415
  if scene < 0:
    raise WonderlandError(f"--scene {scene}: must be >= 0")
  config = dict(data, source="synthetic", eval_seed=SCENE_SEED, num_eval_scenes=scene + 1)
  return make_clip_source(config, held_out=True).clip(scene, clip_rng(SCENE_SEED, scene))


def novel_orbit(gaussians, first: Any, num_frames: int = NOVEL_FRAMES, degrees: float = NOVEL_DEGREES):
  """An orbit starting at the input view (`first`: the re-based first camera, the identity pose) around the
  point ahead of it at the scene's depth (the median depth of its visible Gaussians), `degrees` to the right."""
  from wonderland_jax.camera import make_trajectory  # noqa: PLC0415
  depths = np.asarray(gaussians.means)[:, 2]
  visible = (np.asarray(gaussians.opacities) > 0.05) & (depths > 0)
  depth = float(np.median(depths[visible])) if visible.any() else 1.0
  return make_trajectory("orbit", num_frames, radius=depth, degrees=degrees, K=np.asarray(first.K),
                         width=first.width, height=first.height)


def _psnr(prediction: np.ndarray, target: np.ndarray) -> list[float]:
  """Per-frame PSNR (dB, at most 100) of (F, H, W, 3) images in [0, 1]."""
  mse = np.mean((np.asarray(prediction, np.float64) - np.asarray(target, np.float64)) ** 2, axis=(1, 2, 3))
  return [float(v) for v in -10 * np.log10(np.maximum(mse, 1e-10))]


def next_steps(out: Path) -> str:
  """Where the outputs are and how to run the same on the converted CogVideoX-5B-I2V (printed at the end)."""
  return f"""outputs in {out}: scene.ply, flythrough.mp4, novel_orbit.mp4, video.mp4, report.md (and report.json)

The same pipeline on CogVideoX-5B-I2V (a local copy of the diffusers THUDM/CogVideoX-5b-I2V folder; the camera
branch and the LaLRM are trained with the configs below, docs/camera_dit.md and docs/lalrm.md):
  wonderland convert cogvideox --src <diffusers CogVideoX-5b-I2V dir> --out checkpoints/cogvideox-5b-i2v
  wonderland train camera-dit --config configs/camera_dit_5b.py --workdir runs/camera_dit_5b \\
      --config.data.format=realestate10k --config.data.root=<RealEstate10K train dir>
  wonderland train lalrm --config configs/lalrm_lowres.py --workdir runs/lalrm_lowres ...   (see its docstring)
  wonderland generate --model checkpoints/cogvideox-5b-i2v --branch runs/camera_dit_5b/model \\
      --lalrm runs/lalrm_lowres/model --image <first frame.png> --trajectory orbit --out scene_out/"""


def run_demo(out: str | Path, *, steps: int = DEFAULT_STEPS, seed: int = 0, scene: int = 0,
             overwrite: bool = False, weights: str | Path | None = None) -> dict[str, Any]:
  """Runs the demo (module docstring) into `out` (written whole or not at all; an existing non-empty `out` is
  replaced only with `overwrite`); returns the report (also report.json / report.md). steps: sampling steps;
  seed: the sampling noise; scene: which held-out scene; weights: default `weights_directory()`."""
  import jax  # noqa: PLC0415

  from wonderland_jax.camera import Camera  # noqa: PLC0415
  from wonderland_jax.checkpoints import read_description  # noqa: PLC0415
  from wonderland_jax.io_utils import atomic_directory, check_output_directory, write_json, write_png, write_video  # noqa: PLC0415
  from wonderland_jax.pipeline import WonderlandPipeline, generate_scene, peak_rss_bytes, write_scene_outputs  # noqa: PLC0415
  from wonderland_jax.reconstruct import reconstruct  # noqa: PLC0415
  from wonderland_jax.splat.flythrough import render_frames  # noqa: PLC0415

  started = time.perf_counter()
  out = Path(out)
  check_output_directory(out, overwrite)
  if steps < 1:
    raise WonderlandError(f"--steps {steps}: must be at least 1")
  weights = Path(weights) if weights is not None else weights_directory()
  models = WonderlandPipeline.load(weights / "pipeline", weights / "branch", weights / "lalrm")
  seconds = {"loading": time.perf_counter() - started}

  data = (read_description(weights / "branch")[2] or {}).get("trained_with", {}).get("data", {})
  clip = demo_clip(data, scene)
  truth = clip["frames"]  # (F, H, W, 3): the scene rendered along its path
  num_frames, height, width, _ = truth.shape
  cameras = Camera.from_viewmat(clip["viewmats"], clip["intrinsics"], width, height)
  if (height, width) != models.default_size:
    raise WonderlandError(f"{weights}: the video model makes {models.default_size} frames, the demo clip is "
                          f"{(height, width)}")
  gaussians, extras = generate_scene(models, truth[0], cameras, "", key=jax.random.key(seed),
                                     num_inference_steps=steps, guidance_scale=1.0, decode_video=True)
  seconds.update(extras["seconds"])

  start = time.perf_counter()
  background = np.zeros(3, np.float32)  # the synthetic scenes' and the LaLRM's training background
  rendered = np.stack(list(render_frames(gaussians, extras["cameras"], background=background, desc="evaluating")))
  reference, reference_cameras = reconstruct(models.lalrm, models.video.pipeline.vae, truth, cameras,
                                             scale_mode=models.scale_mode, scale_target=models.scale_target,
                                             scale_floor=models.scale_floor)
  reference_frames = np.stack(list(render_frames(reference, reference_cameras, background=background,
                                                 desc="reference")))
  # Over the frames after the input one (frame 0 is the input image itself).
  psnr = {"flythrough": _psnr(rendered[1:], truth[1:]), "video": _psnr(extras["frames"][1:], truth[1:]),
          "lalrm_on_ground_truth_latents": _psnr(reference_frames[1:], truth[1:]),
          "input_frame_held_still": _psnr(np.broadcast_to(truth[:1], truth[1:].shape), truth[1:])}
  seconds["evaluation"] = time.perf_counter() - start

  manifest = _read_json(weights / "MANIFEST.json")
  with atomic_directory(out) as staging:
    render_size = (RENDER_SCALE * width, RENDER_SCALE * height)
    seconds.update(write_scene_outputs(staging, gaussians, extras, fps=8.0, render_size=render_size,
                                       background=background, novel_path=novel_orbit(gaussians, extras["cameras"][0])))
    write_video(staging / "ground_truth.mp4", truth, fps=8.0)
    write_png(staging / "input.png", truth[0])
    report = dict(
        inputs=dict(steps=steps, seed=seed, scene=scene, scene_dataset_seed=SCENE_SEED, prompt="",
                    guidance_scale=1.0, num_frames=num_frames, size=[width, height], weights=str(weights)),
        outputs={name: str(out / name) for name in OUTPUTS},
        seconds=seconds, total_seconds=time.perf_counter() - started, peak_rss_bytes=peak_rss_bytes(),
        num_gaussians=gaussians.num, render_size=list(render_size), device=jax.devices()[0].platform,
        psnr={name: float(np.mean(values)) for name, values in psnr.items()}, psnr_per_frame=psnr,
        models=dict(held_out=manifest.get("held_out", {}), steps=manifest.get("steps", {})))
    write_json(staging / "report.json", report)
    (staging / "report.md").write_text(_markdown(report), encoding="utf-8")
  logger.info("demo: %d Gaussians, flythrough PSNR %.2f dB vs the ground truth (%.0fs)", gaussians.num,
              report["psnr"]["flythrough"], report["total_seconds"])
  return report


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise WonderlandError(f"{path}: cannot read: {e}") from None


def _markdown(report: dict) -> str:
  inputs, psnr, held_out = report["inputs"], report["psnr"], report["models"]["held_out"]
  width, height = inputs["size"]
  lines = [
      "# wonderland demo: image + camera path -> 3D Gaussians, on the shipped tiny models", "",
      f"Held-out synthetic scene {inputs['scene']} (dataset seed {inputs['scene_dataset_seed']}, never trained or "
      f"evaluated on): its first frame ({width}x{height}) is the input image, its own {inputs['num_frames']} "
      f"cameras the trajectory; {inputs['steps']} sampling steps, seed {inputs['seed']}, empty prompt. "
      f"{report['num_gaussians']:,} Gaussians; {report['total_seconds']:.0f} s on {report['device']}, peak "
      f"memory {report['peak_rss_bytes'] / 2 ** 30:.2f} GiB.", "",
      "| stage | seconds |", "|---|---:|",
      *(f"| {name} | {value:.1f} |" for name, value in report["seconds"].items()), "",
      f"PSNR against the ground-truth frames of the path (dB, mean over frames 1-{inputs['num_frames'] - 1}: "
      "those after the input frame):", "",
      "| | PSNR |", "|---|---:|",
      f"| the generated scene rendered along the path (flythrough) | {psnr['flythrough']:.2f} |",
      f"| the decoded generated video (video.mp4) | {psnr['video']:.2f} |",
      f"| reference: the LaLRM on the ground-truth clip's VAE latents | {psnr['lalrm_on_ground_truth_latents']:.2f} |",
      f"| baseline: the input frame held still | {psnr['input_frame_held_still']:.2f} |",
      ""]
  if held_out:
    lalrm, dit = held_out.get("lalrm", {}), held_out.get("camera_dit", {})
    lines += ["The shipped models (MANIFEST.json): LaLRM held-out novel-view PSNR "
              f"{lalrm.get('psnr', float('nan')):.2f} "
              f"dB (untrained {lalrm.get('untrained_psnr', float('nan')):.2f}); camera DiT held-out v-MSE "
              f"{dit.get('v_mse', float('nan')):.3f} (untrained {dit.get('untrained_v_mse', float('nan')):.3f}).", ""]
  lines += ["flythrough.mp4 (the input path) and novel_orbit.mp4 (an orbit of "
            f"{NOVEL_DEGREES:.0f} degrees from the input view around the scene's centre) are rendered at "
            f"{report['render_size'][0]}x{report['render_size'][1]}; video.mp4 (the generated video, decoded) and "
            "ground_truth.mp4 (the scene along the path) are at the video size.", ""]
  return "\n".join(lines)
