"""A video (or frames) with its cameras -> a 3D Gaussian scene, with a trained LaLRM.

    scene, cameras = reconstruct(lalrm, vae, frames, cameras)      # frames (F, H, W, 3) in [0, 1]

The frames are encoded by the VAE (posterior mean times its scaling factor: what the LaLRM trained on), the
cameras are re-based on the first frame and scale-normalised exactly as the training clips were
(`camera.normalize_poses` with the mode, target and floor the model was trained with:
`checkpoints.pose_normalization`),
and the Gaussians are returned in the first camera's frame, in the *input's* units (the normalisation undone:
means and scales divided by the pose scale), so they line up with the given cameras re-based on the first.
`reconstruct_latents` starts from latents instead (a video model's samples: no decoding and re-encoding).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.camera.camera import Camera
from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR, normalize_poses, renormalization
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import read_image
from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig, predict
from wonderland_jax.models.vae import encode_frames
from wonderland_jax.splat.gaussians import Gaussians

logger = logging.getLogger("wonderland_jax")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_frames(path: str | os.PathLike) -> np.ndarray:
  """A video file (any imageio-ffmpeg format) or a directory of images (sorted by name) -> (F, H, W, 3)
  float32 in [0, 1]."""
  path = Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise InputFileError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    frames = [read_image(p) for p in files]
    if len({f.shape for f in frames}) != 1:
      raise InputFileError(f"{path}: the images differ in size")
    return np.stack(frames)
  if not path.is_file():
    raise InputFileError(f"{path}: no such video file or frames directory")
  import imageio.v3 as iio3  # noqa: PLC0415
  try:
    frames = np.asarray(iio3.imread(path))
  except Exception as error:  # noqa: BLE001 (imageio raises many types for undecodable files)
    raise InputFileError(f"{path}: cannot read the video ({error})") from None
  if frames.ndim != 4 or frames.shape[-1] < 3:
    raise InputFileError(f"{path}: expected a colour video, got an array of shape {frames.shape}")
  return frames[..., :3].astype(np.float32) / 255.0


def default_vae_directory(lalrm_directory: str | os.PathLike) -> Path:
  """The VAE the LaLRM in `lalrm_directory` was trained with: the one its run exported beside it
  (`<workdir>/vae`, random tiny VAEs), else its config's `vae.checkpoint`."""
  beside = Path(lalrm_directory).parent / "vae"
  metadata = checkpoints.read_description(lalrm_directory)[2] or {}
  configured = metadata.get("trained_with", {}).get("vae", {}).get("checkpoint")
  return Path(configured) if configured and not beside.is_dir() else beside


def check_vae(lalrm_config: LaLRMConfig, vae_config, lalrm_source: str, vae_source: str) -> None:
  """Raises `InputFileError` naming `lalrm_source` when the LaLRM cannot read this VAE's latents (channels or
  compression differ). That it was trained on this VAE's latents (same weights) is not checkable here."""
  theirs = dict(latent_channels=vae_config.latent_channels, spatial_compression=vae_config.spatial_compression,
                temporal_compression=int(vae_config.temporal_compression_ratio))
  for name, value in theirs.items():
    if getattr(lalrm_config, name) != value:
      raise InputFileError(f"{lalrm_source}: the LaLRM reads latents with {name}={getattr(lalrm_config, name)} but "
                           f"the VAE of {vae_source} has {name}={value}; use an LaLRM trained on that VAE")


def check_latents(config: LaLRMConfig, latents_shape: tuple[int, ...], num_cameras: int) -> None:
  """Raises `WonderlandError` unless latents (1, t, h, w, C) fit the LaLRM and one camera per video frame."""
  shape = tuple(latents_shape)
  if len(shape) != 5 or shape[0] != 1 or shape[-1] != config.latent_channels:
    raise WonderlandError(f"latents must be (1, t, h, w, {config.latent_channels}) for this LaLRM, got {shape}")
  if shape[2] % config.patch_size or shape[3] % config.patch_size:
    raise WonderlandError(f"latents of {shape[3]}x{shape[2]}: width and height must be multiples of the LaLRM's "
                          f"patch size {config.patch_size} (video sizes multiples of "
                          f"{config.spatial_compression * config.patch_size})")
  if num_cameras != config.num_frames(shape[1]):
    raise WonderlandError(f"{shape[1]} latent frames are {config.num_frames(shape[1])} video frames but there are "
                          f"{num_cameras} cameras")


@nnx.jit
def _encode(vae, frames):
  return encode_frames(vae, frames)


@nnx.jit(static_argnames=("height", "width", "scale_mode", "scale_target", "scale_floor"))
def _predict(lalrm, latents, viewmats, intrinsics, height, width, scale_mode, scale_target, scale_floor):
  return predict(lalrm, latents, viewmats, intrinsics, height, width, scale_mode=scale_mode,
                 scale_target=scale_target, scale_floor=scale_floor)[1]


def reconstruct_latents(lalrm: LaLRM, latents: jax.Array, cameras: Camera, *, scale_mode: str = "max_distance",
                        scale_target: float = 1.0,
                        scale_floor: float = DEFAULT_SCALE_FLOOR) -> tuple[Gaussians, Camera, float]:
  """Scaled video latents (1, t, h, w, C) (posterior mean x the VAE's scaling factor, or what a video model
  samples) with one camera per video frame (F = 1 + 4 (t - 1); any resolution, same field of view) ->
  (Gaussians, the cameras re-based on the first frame at the video size (8h, 8w for an 8x VAE), in the input's
  units, the pose scale: normalised = input units x scale). The LaLRM sees the cameras normalised as in its
  training (`normalize_poses(viewmats, F, scale_mode, scale_target, scale_floor)`; `predict` then gets
  `camera.renormalization` of the settings, a no-op on those normalised cameras)."""
  config = lalrm.config
  check_latents(config, latents.shape, len(cameras))
  height, width = (config.spatial_compression * size for size in latents.shape[2:4])
  cameras = cameras.resized(width, height)
  viewmats, scale = normalize_poses(np.asarray(cameras.viewmat), len(cameras), scale_mode, scale_target,
                                    scale_floor)
  settings = renormalization(scale_mode, float(scale_target), float(scale_floor))
  gaussians = _predict(lalrm, jnp.asarray(latents), jnp.asarray(viewmats, jnp.float32)[None],
                       jnp.asarray(cameras.K)[None], height, width, **settings)
  gaussians = jax.tree.map(lambda x: x[0], gaussians)
  unscaled = viewmats.copy()
  unscaled[:, :3, 3] /= scale
  gaussians = gaussians.replace(means=gaussians.means / scale, scales=gaussians.scales / scale)
  return gaussians, Camera(jnp.asarray(unscaled, jnp.float32), cameras.K, width, height), float(scale)


def reconstruct(lalrm: LaLRM, vae, frames: np.ndarray, cameras: Camera, *, scale_mode: str = "max_distance",
                scale_target: float = 1.0, scale_floor: float = DEFAULT_SCALE_FLOOR) -> tuple[Gaussians, Camera]:
  """frames (F, H, W, 3) in [0, 1] with F cameras (any resolution, same field of view) -> (Gaussians, the
  cameras re-based on the first frame, in the input's units). F must be 1 + 4k and H, W multiples of the
  LaLRM's token stride. The frames are encoded by `vae`, then `reconstruct_latents`."""
  config = lalrm.config
  num_frames, height, width, _ = frames.shape
  if (num_frames - 1) % config.temporal_compression:
    raise WonderlandError(f"{num_frames} frames: the LaLRM needs 1 + {config.temporal_compression}k frames "
                          "(e.g. 49); trim the video")
  if len(cameras) != num_frames:
    raise WonderlandError(f"{num_frames} frames but {len(cameras)} cameras")
  stride = config.spatial_compression * config.patch_size
  if height % stride or width % stride:
    raise WonderlandError(f"frames of {width}x{height}: width and height must be multiples of {stride}")
  latents = _encode(vae, jnp.asarray(frames)[None])
  gaussians, cameras, _ = reconstruct_latents(lalrm, latents, cameras, scale_mode=scale_mode,
                                              scale_target=scale_target, scale_floor=scale_floor)
  return gaussians, cameras


def reconstruct_files(model: str | os.PathLike, video: str | os.PathLike, cameras: str | os.PathLike,
                      out: str | os.PathLike, *, vae: str | os.PathLike | None = None,
                      size: tuple[int, int] | None = None, render: str | os.PathLike | None = None,
                      fps: float = 8.0) -> Gaussians:
  """`wonderland reconstruct`: the trained LaLRM in `model` on a video file or frames directory with its pose file
  (one camera per frame) -> `out` (.ply), and with `render` the scene re-rendered along the input cameras (a
  video). `vae` defaults to `default_vae_directory(model)`; `size` (width, height) resizes the frames first. The
  cameras are normalised as the LaLRM trained (`checkpoints.pose_normalization`)."""
  from wonderland_jax.camera.io import read_pose_file  # noqa: PLC0415
  from wonderland_jax.diffusion.pipeline import resize_image  # noqa: PLC0415
  from wonderland_jax.io_utils import VIDEO_EXTENSIONS, write_video  # noqa: PLC0415
  from wonderland_jax.outputs import Outputs  # noqa: PLC0415
  from wonderland_jax.splat.flythrough import render_frames  # noqa: PLC0415
  from wonderland_jax.splat.ply import save_ply  # noqa: PLC0415
  with Outputs() as outputs:  # both outputs checked now, written together at the end or not at all
    ply = outputs.file(out, flag="--out", suffixes=(".ply",))
    video_out = None if render is None else outputs.file(render, flag="--render", suffixes=VIDEO_EXTENSIONS)
    lalrm = checkpoints.load(model, kind="lalrm")
    vae_directory = Path(vae) if vae else default_vae_directory(model)
    if not vae_directory.is_dir():
      raise WonderlandError(f"--vae: {vae_directory} not found; pass the VAE the LaLRM was trained with")
    vae_model = checkpoints.load(vae_directory, kind="cogvideox_vae")
    check_vae(lalrm.config, vae_model.config, str(model), str(vae_directory))
    frames = read_frames(video)
    height, width = frames.shape[1:3]
    if size:
      width, height = size
      frames = np.stack([resize_image(frame, height, width) for frame in frames])
    poses = read_pose_file(cameras, width=width, height=height)
    if len(poses) != len(frames):
      raise WonderlandError(f"--cameras {cameras} has {len(poses)} poses but --video {video} has "
                            f"{len(frames)} frames")
    scale_mode, scale_target, scale_floor = checkpoints.pose_normalization(model)
    gaussians, rebased = reconstruct(lalrm, vae_model, frames, poses.cameras, scale_mode=scale_mode,
                                     scale_target=scale_target, scale_floor=scale_floor)
    save_ply(ply, gaussians)
    if video_out is not None:
      write_video(video_out, list(render_frames(gaussians, rebased, desc="rendering the input path")), fps=fps)
  logger.info("%s: %d Gaussians%s", out, gaussians.num, "" if render is None else f"; {render}: the input cameras "
              "re-rendered")
  return gaussians
