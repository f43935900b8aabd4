"""Camera-guidance precision: RotErr and TransErr of poses estimated from a generated video (COLMAP) against the
poses it was conditioned on, as in CameraCtrl / VD3D and the Wonderland paper (Table 1).

    estimated = colmap_trajectory("colmap/clip_0007", num_frames=49)     # the generated video's COLMAP model
    errors = camera_errors(estimated, conditioning_viewmats, num_frames=16)
    errors.rotation, errors.translation                                   # means over the first 16 frames

Both trajectories are re-based on their first camera (which becomes the identity) and scale-normalised so the
farthest camera centre from the first is at distance 1 (COLMAP's scale is arbitrary; datasets use different
units). Per frame i (frame 0 included, where both errors are 0):

  RotErr_i   = arccos((tr(R_est,i R_ref,i^T) - 1) / 2)      radians, between the camera->world rotations;
  TransErr_i = |c_est,i - c_ref,i|                            between the normalised camera centres;

and the reported figures are their means over the frames registered by COLMAP among the first `num_frames`
(the paper: 16). CameraCtrl sums over frames instead of averaging; multiply by the frame count to compare.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from wonderland_jax.camera.io import read_colmap
from wonderland_jax.camera.poses import normalize_trajectory_scale, rebase_to_first
from wonderland_jax.errors import InputFileError, WonderlandError

CAMERA_ERROR_FRAMES = 16  # the paper measures the first 16 frames of every method


@dataclasses.dataclass(frozen=True)
class CameraErrors:
  """rotation, translation: the means over `frames` (radians; normalised units). per_frame_*: (len(frames),)."""

  rotation: float
  translation: float
  frames: tuple[int, ...]
  per_frame_rotation: np.ndarray
  per_frame_translation: np.ndarray


def _normalised_c2w(viewmats: np.ndarray) -> np.ndarray:
  """(F, 4, 4) world->camera -> (F, 4, 4) camera->world re-based on camera 0 and scaled to max distance 1."""
  return normalize_trajectory_scale(rebase_to_first(np.linalg.inv(viewmats)), 1.0, "max_distance")


def camera_errors(estimated, reference, num_frames: int = CAMERA_ERROR_FRAMES) -> CameraErrors:
  """RotErr / TransErr (module docstring) of `estimated` against `reference` over their first num_frames frames.

  estimated: (F, 4, 4) world->camera, NaN rows for frames the estimate lacks (unregistered by COLMAP); frame 0
  must be present (it defines the common frame). reference: (F', 4, 4) world->camera, F' >= min(F, num_frames).
  """
  estimated = np.asarray(estimated, np.float64)
  reference = np.asarray(reference, np.float64)
  for name, poses in (("estimated", estimated), ("reference", reference)):
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
      raise WonderlandError(f"camera_errors: {name} poses must be (F, 4, 4) world->camera, got {poses.shape}")
  count = min(num_frames, len(estimated))
  if len(reference) < count:
    raise WonderlandError(f"camera_errors: {count} estimated frames but only {len(reference)} reference poses")
  present = np.isfinite(estimated[:count]).all(axis=(1, 2))
  if count == 0 or not present[0]:
    raise WonderlandError("camera_errors: the first frame has no estimated pose (it defines the common frame)")
  frames = np.flatnonzero(present)
  ours = _normalised_c2w(estimated[frames])
  theirs = _normalised_c2w(reference[frames])
  relative = ours[:, :3, :3] @ np.swapaxes(theirs[:, :3, :3], -1, -2)
  cosine = (np.trace(relative, axis1=-2, axis2=-1) - 1.0) / 2.0
  rotation = np.arccos(np.clip(cosine, -1.0, 1.0))
  translation = np.linalg.norm(ours[:, :3, 3] - theirs[:, :3, 3], axis=-1)
  return CameraErrors(float(rotation.mean()), float(translation.mean()), tuple(int(i) for i in frames), rotation,
                      translation)


def colmap_trajectory(model_dir, num_frames: int) -> np.ndarray:
  """A COLMAP model (text or binary, in `model_dir` or its sparse/0/) of a video's frames -> (num_frames, 4, 4)
  world->camera, NaN for frames COLMAP did not register. Frame k is the image whose name's last number is k
  (frame_00000.png, 00012.jpg, ...: the names `wonderland eval video --frames-dir` writes)."""
  poses = read_colmap(model_dir)
  viewmats = np.full((num_frames, 4, 4), np.nan)
  seen: dict[int, str] = {}
  for name, viewmat in zip(poses.names, np.asarray(poses.cameras.viewmat, np.float64)):
    numbers = re.findall(r"\d+", Path(name).stem)
    if not numbers:
      raise InputFileError(f"{model_dir}: image {name!r} has no frame number in its name")
    index = int(numbers[-1])
    if index in seen:
      raise InputFileError(f"{model_dir}: images {seen[index]!r} and {name!r} both have frame number {index}")
    seen[index] = name
    if index < num_frames:
      viewmats[index] = viewmat
  return viewmats
