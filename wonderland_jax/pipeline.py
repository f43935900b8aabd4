"""Wonderland end to end: one image and a camera path -> a 3D Gaussian scene (the paper's Fig. 2).

    pipe = WonderlandPipeline.from_pretrained("demo")      # or a folder with pipeline/, branch/, lalrm/
    result = pipe("photo.jpg", trajectory="orbit", prompt="a castle at dusk", num_inference_steps=50,
                  guidance_scale=6.0, seed=0)
    result.gaussians, result.video, result.latents          # splat.Gaussians, (F, H, W, 3), (1, t, h, w, C)
    result.save("scene_out/")                               # what `wonderland generate` writes

The lower-level calls, for your own cameras and stages:

    models = WonderlandPipeline.load("checkpoints/cogvideox-5b-i2v", "runs/camera_dit/model", "runs/lalrm/model")
    cameras = make_trajectory("orbit", 49, width=720, height=480)
    scene, extras = generate_scene(models, image, cameras, "a castle at dusk", key=jax.random.key(0))

Stages, each a jitted program with a progress bar, timed in `extras["seconds"]`:

  sampling        camera-guided video latents (`CameraVideoPipeline`: CogVideoX + the camera branch), in the
                  diffusion model's (scaled) latent space: exactly what the LaLRM trained on (posterior mean x the
                  VAE's scaling factor), so the video is never decoded to build the scene;
  reconstruction  the LaLRM on those latents and the cameras' Plücker rays, normalised as in its training
                  (`reconstruct.reconstruct_latents`) -> Gaussians in the first camera's frame, in the input
                  cameras' units;
  decoding        (decode_video=True, or poses='sfm', which needs the frames) the VAE decodes the latents;
  poses           (poses other than 'conditioning') the reconstruction cameras estimated from the video and
                  aligned to the conditioning path (`camera.sfm`: a COLMAP model of its frames, or pycolmap
                  structure-from-motion on them), before reconstruction.

The LaLRM must read the video model's latents: same latent channels and compression (checked on loading) and,
for a meaningful scene, trained on latents of the same VAE (not checkable from the checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from wonderland_jax import checkpoints
from wonderland_jax.camera.camera import Camera
from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR
from wonderland_jax.camera.sfm import PoseSource, rebased_cameras, reconstruction_cameras
from wonderland_jax.convert.pipeline import read_pipeline
from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline
from wonderland_jax.diffusion.pipeline import is_diffusers_pipeline
from wonderland_jax.errors import InputFileError
from wonderland_jax.io_utils import atomic_directory, write_json, write_video
from wonderland_jax.models.lalrm import LaLRM
from wonderland_jax.models.vae import VAEConfig
from wonderland_jax.parallel.compute import Compute
from wonderland_jax.progress import progress
from wonderland_jax.reconstruct import check_latents, check_vae, reconstruct_latents
from wonderland_jax.splat.flythrough import fitted_trajectory, render_frames
from wonderland_jax.splat.gaussians import Gaussians
from wonderland_jax.splat.ply import save_ply

logger = logging.getLogger("wonderland_jax")


@dataclasses.dataclass
class WonderlandPipeline:
  """The camera-guided video model and the LaLRM, with the pose normalisation the LaLRM trained with."""

  video: CameraVideoPipeline
  lalrm: LaLRM
  scale_mode: str = "max_distance"
  scale_target: float = 1.0
  scale_floor: float = DEFAULT_SCALE_FLOOR

  @classmethod
  def load(cls, model_directory: str | os.PathLike, branch_directory: str | os.PathLike,
           lalrm_directory: str | os.PathLike, *, merge_lora: bool = False,
           compute: Compute | None = None) -> WonderlandPipeline:
    """A converted CogVideoX pipeline (`wonderland convert cogvideox`; or a diffusers pipeline folder, converted
    in memory), a camera branch (`wonderland train
    camera-dit`: `<workdir>/model`) and an LaLRM (`wonderland train lalrm`: `<workdir>/model`). Raises
    `InputFileError` naming the directory at fault; the LaLRM is checked against the VAE's config before the
    video model loads. `compute`: dtype, attention and mesh of every model (`parallel.compute`; default
    `Compute.create()`: bfloat16 on accelerators, float32 on CPU, one device)."""
    kind = checkpoints.read_description(lalrm_directory)[0]
    if kind != "lalrm":
      raise InputFileError(f"{lalrm_directory}: a {kind!r} checkpoint, not an LaLRM (`wonderland train lalrm`: "
                           "<workdir>/model)")
    compute = Compute.create() if compute is None else compute
    with compute.loading():
      lalrm = compute.cast(checkpoints.load(lalrm_directory, overrides=compute.overrides()))
    if is_diffusers_pipeline(model_directory):  # converted in memory by the video pipeline below
      vae_json = Path(model_directory) / "vae" / "config.json"
      vae_config = VAEConfig.from_diffusers(json.loads(vae_json.read_text()), where=str(vae_json))
    else:
      read_pipeline(model_directory)  # its own message when model_directory is not a converted pipeline
      vae_config = VAEConfig.from_diffusers(checkpoints.read_description(Path(model_directory) / "vae")[1])
    check_vae(lalrm.config, vae_config, str(lalrm_directory), str(model_directory))
    video = CameraVideoPipeline.load(model_directory, branch_directory, merge_lora=merge_lora, compute=compute)
    return cls(video, lalrm, *checkpoints.pose_normalization(lalrm_directory))

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike = "demo", *, branch: str | os.PathLike | None = None,
                      lalrm: str | os.PathLike | None = None, dtype: str = "auto", attention: str = "auto",
                      mesh: str = "", merge_lora: bool = False) -> WonderlandPipeline:
    """A ready pipeline: `path` is "demo" (the tiny models shipped in the package), a Wonderland folder holding
    `pipeline/` (a converted CogVideoX pipeline), `branch/` and `lalrm/` (the layout `python -m
    wonderland_jax.demo.build` writes), or a converted pipeline with `branch` and `lalrm` given. dtype
    ('auto': bfloat16 on accelerators, float32 on CPU), attention and mesh (e.g. 'context=4,data=2') as the
    CLI's --dtype / --attention / --mesh (`parallel.compute`)."""
    model, branch, lalrm = resolve_model(path, branch, lalrm)
    return cls.load(model, branch, lalrm, merge_lora=merge_lora,
                    compute=Compute.create(dtype=dtype, attention=attention, mesh=mesh))

  @property
  def default_size(self) -> tuple[int, int]:
    """(height, width) in pixels the video model was trained at."""
    return self.video.default_size

  def __call__(self, image, trajectory: str | os.PathLike | Camera = "orbit", prompt: str = "", *,
               num_frames: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 6.0,
               negative_prompt: str = "", seed: int = 0, fov_deg: float = 60.0, decode_video: bool = True,
               poses: str = "conditioning") -> WonderlandResult:
    """One image -> a 3D scene along `trajectory`.

    image: a path (PNG / JPEG), a PIL image, or an (H, W, 3) array (uint8, or float in [0, 1]) of any size:
      resized to cover the model's size and centre-cropped (diffusers' `resize_mode="crop"`; its default
      resize would distort the aspect ratio).
    trajectory: a preset name (`camera.PRESETS`: orbit, dolly, ...; `num_frames` cameras, default 49, at
      `fov_deg`), a pose file (RealEstate10K .txt, transforms.json, a COLMAP model: one camera per frame), or a
      `Camera` batch. Re-based on the first camera and normalised as in training.
    seed: the sampling noise. decode_video: also decode the video (`result.video`; else None). poses: as
      `generate_scene`'s. The other keywords as `generate_scene`'s."""
    from wonderland_jax.camera import PRESETS, make_trajectory, read_pose_file  # noqa: PLC0415
    height, width = self.default_size
    started = time.perf_counter()
    pixels = fit_image(_as_image(image), height, width)
    if isinstance(trajectory, Camera):
      cameras = trajectory.resized(width, height) if (trajectory.width, trajectory.height) != (width, height) \
          else trajectory
    elif isinstance(trajectory, str) and trajectory in PRESETS:
      cameras = make_trajectory(trajectory, num_frames or 49, width=width, height=height, fov_deg=fov_deg)
    elif Path(trajectory).exists():
      cameras = read_pose_file(trajectory, width, height).cameras
    else:
      raise InputFileError(f"trajectory {trajectory!r} is neither a preset ({', '.join(PRESETS)}) nor an "
                           "existing pose file")
    gaussians, extras = generate_scene(self, pixels, cameras, prompt, key=jax.random.key(seed),
                                       negative_prompt=negative_prompt, num_frames=num_frames,
                                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                       decode_video=decode_video, poses=poses)
    inputs = dict(trajectory=str(trajectory) if not isinstance(trajectory, Camera) else "cameras", prompt=prompt,
                  negative_prompt=negative_prompt, num_frames=len(cameras), steps=num_inference_steps,
                  guidance=guidance_scale, seed=seed, size=[width, height], poses=str(poses))
    return WonderlandResult(gaussians, extras["frames"], extras["latents"], extras["cameras"], extras, inputs,
                            started)


@dataclasses.dataclass
class WonderlandResult:
  """What `WonderlandPipeline.__call__` made: `gaussians` (first camera's frame), `video` (F, H, W, 3) in [0, 1]
  or None, `latents` (1, t, h, w, C) scaled, `cameras` (the reconstruction cameras, re-based), `extras`
  (`generate_scene`'s), `inputs` (the call's settings, recorded in report.json)."""

  gaussians: Gaussians
  video: np.ndarray | None
  latents: jax.Array
  cameras: Camera
  extras: dict[str, Any]
  inputs: dict[str, Any]
  started: float

  def save(self, out: str | os.PathLike, *, overwrite: bool = False, fps: float = 8.0) -> tuple[str, ...]:
    """Writes what `wonderland generate` writes into `out` (whole or not at all; an existing non-empty `out` is
    replaced only with overwrite): scene.ply, flythrough.mp4, novel_orbit.mp4, latents.npz, report.json and
    video.mp4 when decoded. Returns the file names."""
    from wonderland_jax.outputs import check_output_directory  # noqa: PLC0415
    check_output_directory(out, overwrite)
    return save_generation(out, self.gaussians, self.extras, inputs=self.inputs, seconds=self.extras["seconds"],
                           started=self.started, fps=fps)


def resolve_model(path: str | os.PathLike, branch=None, lalrm=None, *,
                  need_lalrm: bool = True) -> tuple[Path, Path, Path | None]:
  """(converted pipeline, branch, LaLRM) of `path`: "demo" (the shipped weights), a Wonderland folder
  (`pipeline/`, `branch/`, `lalrm/`; given branch / lalrm win), or a converted pipeline (branch and lalrm as
  given). A missing branch (or LaLRM, with need_lalrm) is an InputFileError naming the flag."""
  path = wonderland_folder(path)
  if (path / "pipeline").is_dir():
    branch = branch if branch is not None else (path / "branch" if (path / "branch").is_dir() else None)
    lalrm = lalrm if lalrm is not None else (path / "lalrm" if (path / "lalrm").is_dir() else None)
    path = path / "pipeline"
  if branch is None or (lalrm is None and need_lalrm):
    missing = "branch" if branch is None else "lalrm"
    raise InputFileError(f"{path}: no {missing}/ beside it; give {missing}= (CLI: --{missing}), or a folder "
                         "with pipeline/, branch/ and lalrm/ (or `demo`)")
  return path, Path(branch), None if lalrm is None else Path(lalrm)


def wonderland_folder(path: str | os.PathLike) -> Path:
  """`path`, with "demo" standing for the shipped weights' folder."""
  if str(path) == "demo":  # the demo's weights (demo.weights_directory; not imported: the demo imports this)
    weights = Path(__file__).resolve().parent / "demo" / "weights"
    if not (weights / "MANIFEST.json").is_file():
      raise InputFileError(f"{weights}: the demo weights are missing (no MANIFEST.json)")
    return weights
  return Path(path)


def pipeline_directory(path: str | os.PathLike) -> Path:
  """The converted CogVideoX pipeline of `path`: itself, or the `pipeline/` of a Wonderland folder or demo."""
  path = wonderland_folder(path)
  return path / "pipeline" if (path / "pipeline").is_dir() else path


def _as_image(image) -> np.ndarray:
  """A path, PIL image or array -> (H, W, 3) float32 in [0, 1]."""
  from wonderland_jax.io_utils import read_image  # noqa: PLC0415
  if isinstance(image, (str, os.PathLike)):
    return read_image(image)
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] not in (3, 4):
    raise InputFileError(f"image: expected (H, W, 3), got shape {array.shape}")
  array = array[..., :3]
  return (array.astype(np.float32) / 255.0) if array.dtype == np.uint8 else array.astype(np.float32)


def fit_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """(h, w, 3) -> (height, width, 3): resized (bilinear, antialiased) to cover the size, then centre-cropped."""
  from wonderland_jax.diffusion.pipeline import resize_image  # noqa: PLC0415
  scale = max(height / image.shape[0], width / image.shape[1])
  covered = resize_image(image, max(height, round(image.shape[0] * scale)), max(width, round(image.shape[1] * scale)))
  top, left = (covered.shape[0] - height) // 2, (covered.shape[1] - width) // 2
  return np.clip(np.asarray(covered[top:top + height, left:left + width], np.float32), 0.0, 1.0)


def _run_stage(name: str, seconds: dict[str, float], function: Callable[[], Any]) -> Any:
  """Runs one stage (a jitted call) under a one-step progress bar; its wall time, results ready, goes to
  seconds[name]."""
  start = time.perf_counter()
  for _ in progress(range(1), desc=name):
    result = jax.block_until_ready(function())
  seconds[name] = time.perf_counter() - start
  return result


def generate_scene(models: WonderlandPipeline, image: np.ndarray, cameras: Camera, prompt: str = "", *,
                   key: jax.Array, negative_prompt: str = "", num_frames: int | None = None,
                   num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
                   decode_video: bool = False,
                   poses: PoseSource | str = "conditioning") -> tuple[Gaussians, dict[str, Any]]:
  """image (H, W, 3) in [0, 1] at the video size and F cameras (one per video frame, F = 1 + 4k; any world
  frame and units, OpenCV) -> (Gaussians in the first camera's frame and the cameras' units, extras):

    latents     (1, t, H / 8, W / 8, C) (8: the VAE's factor) the sampled latents, scaled: the diffusion and
                LaLRM latent space (`scale_latents` of `CameraVideoPipeline.generate`'s, which are unscaled);
    cameras     the F cameras the LaLRM reconstructed with, re-based on the first, at the video size, in the
                input's units (the scene's);
    conditioning_cameras  the input cameras the same way (= cameras for poses='conditioning'): the input path's
                views of the scene (the first frame is the same camera in both);
    poses       what `reconstruction_cameras` used: {requested, used, frames, ...} (report.json's "poses");
    pose_scale  the LaLRM saw the cameras' translations (and the scene) x pose_scale;
    frames      (F, H, W, 3) in [0, 1] when decoded (decode_video or poses='sfm'), else None;
    seconds     {stage: wall seconds} for sampling, reconstruction (and decoding, poses).

  poses: 'conditioning' (the input cameras), 'colmap:<model dir>' or 'sfm' (`camera.sfm`; checked before
  sampling). num_frames (default F) must equal F. The other keywords are `CameraVideoPipeline.generate`'s."""
  num_frames = len(cameras) if num_frames is None else num_frames
  poses = PoseSource.parse(poses)
  poses.check(len(cameras))  # pycolmap installed, the COLMAP model readable and of F images: before sampling
  height, width = image.shape[:2]
  video, vae_config = models.video.pipeline, models.video.pipeline.vae.config
  num_latent_frames = video.check(num_frames, height, width)
  factor = vae_config.spatial_compression
  check_latents(models.lalrm.config, (1, num_latent_frames, height // factor, width // factor,
                                      vae_config.latent_channels), num_frames)  # before the long stage
  seconds: dict[str, float] = {}
  start = time.perf_counter()
  unscaled, _ = models.video.generate(image, prompt, cameras, negative_prompt=negative_prompt, num_frames=num_frames,
                                      num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                      use_dynamic_cfg=use_dynamic_cfg, key=key, decode=False)
  latents = jax.block_until_ready(vae_config.scale_latents(unscaled))
  seconds["sampling"] = time.perf_counter() - start
  decode = lambda: _run_stage("decoding", seconds, lambda: video.decode_frames(unscaled))
  frames = decode() if poses.needs_frames else None
  if poses.kind == "conditioning":
    chosen, pose_record = reconstruction_cameras(poses, cameras)
  else:
    chosen, pose_record = _run_stage("poses", seconds, lambda: reconstruction_cameras(poses, cameras, frames))
  with video.compute.running():
    gaussians, rebased, scale = _run_stage("reconstruction", seconds, lambda: reconstruct_latents(
        models.lalrm, latents, chosen, scale_mode=models.scale_mode, scale_target=models.scale_target,
        scale_floor=models.scale_floor))
  if decode_video and frames is None:
    frames = decode()
  logger.info("scene: %d Gaussians (sampling %.1fs, reconstruction %.1fs)", gaussians.num, seconds["sampling"],
              seconds["reconstruction"])
  conditioning = rebased if chosen is cameras else rebased_cameras(cameras, rebased.width, rebased.height)
  extras = dict(latents=latents, cameras=rebased, conditioning_cameras=conditioning, poses=pose_record,
                pose_scale=scale, frames=frames, seconds=seconds)
  return gaussians, extras


def peak_rss_bytes() -> int:
  """The peak resident memory of this process so far (bytes; `getrusage`'s ru_maxrss)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return int(peak if sys.platform == "darwin" else peak * 1024)


def write_scene_outputs(directory: str | os.PathLike, gaussians: Gaussians, extras: dict[str, Any], *,
                        fps: float = 8.0, render_size: tuple[int, int] | None = None,
                        background: np.ndarray | None = None, novel_path: Camera | None = None) -> dict[str, float]:
  """Writes `generate_scene`'s results into `directory` (a staging folder: `wonderland generate` and `wonderland
  demo` rename it into place whole):

    scene.ply        the Gaussians (first camera's frame, the input cameras' units)
    latents.npz      scaled_latents (1, t, h, w, C): the diffusion space the LaLRM reads (`generate-video
                     --latents` writes `latents`, unscaled); viewmats (F, 4, 4), intrinsics (F, 3, 3): the
                     re-based cameras at the video size
    video.mp4        the decoded video, when extras["frames"] is not None
    flythrough.mp4   the scene rendered along the input path
    novel_orbit.mp4  the scene rendered along `novel_path` (default: an orbit fitted to the scene, as many frames
                     as the path)

  The renders are at render_size (width, height; default the video size: the intrinsics scale with it) over
  `background` (default black). Returns the renders' wall seconds: {"flythrough": s, "novel_orbit": s}."""
  directory = Path(directory)
  rebased = extras["cameras"]  # the input path in the scene's frame and units, at the video size
  width, height = render_size or (rebased.width, rebased.height)
  fov_deg = float(np.degrees(2 * np.arctan(rebased.width / (2 * float(rebased.K[0, 0, 0])))))
  if novel_path is None:
    novel_path = fitted_trajectory(gaussians, "orbit", len(rebased), width, height, fov_deg=fov_deg)
  paths = {"flythrough.mp4": rebased.resized(width, height), "novel_orbit.mp4": novel_path.resized(width, height)}
  save_ply(directory / "scene.ply", gaussians)
  np.savez(directory / "latents.npz", scaled_latents=np.asarray(extras["latents"]),
           viewmats=np.asarray(rebased.viewmat), intrinsics=np.asarray(rebased.K))
  if extras.get("frames") is not None:
    write_video(directory / "video.mp4", extras["frames"], fps=fps)
  seconds = {}
  for name, path in paths.items():
    start = time.perf_counter()
    write_video(directory / name, render_frames(gaussians, path, background=background, desc=f"rendering {name}"),
                fps=fps)
    seconds[Path(name).stem] = time.perf_counter() - start
  return seconds


SCENE_OUTPUTS = ("scene.ply", "flythrough.mp4", "novel_orbit.mp4", "latents.npz", "report.json")


def save_generation(out: str | os.PathLike, gaussians: Gaussians, extras: dict[str, Any], *, inputs: dict,
                    seconds: dict[str, float], started: float, fps: float = 8.0) -> tuple[str, ...]:
  """`wonderland generate`'s outputs, written whole into `out` (`write_scene_outputs`, plus `video.mp4` when the
  video was decoded, and report.json: the inputs, outputs, seconds per stage, total seconds since `started`
  (a `time.perf_counter()`), peak memory, Gaussian count, pose scale, the poses used and device). Returns the file
  names."""
  out = Path(out)
  names = SCENE_OUTPUTS + (("video.mp4",) if extras.get("frames") is not None else ())
  with atomic_directory(out) as staging:
    seconds = dict(seconds, **write_scene_outputs(staging, gaussians, extras, fps=fps))
    write_json(staging / "report.json", dict(
        inputs=inputs, outputs={name: str(out / name) for name in names}, seconds=seconds,
        total_seconds=time.perf_counter() - started, peak_rss_bytes=peak_rss_bytes(), num_gaussians=gaussians.num,
        pose_scale=extras["pose_scale"], poses=extras.get("poses"), device=jax.devices()[0].platform))
  return names
