"""Reconstruction cameras estimated from the generated video (`--poses`): a COLMAP model of its frames or
structure-from-motion on them (pycolmap), aligned to the conditioning path.

    source = PoseSource.parse("sfm")              # or "conditioning", "colmap:runs/castle_colmap"
    cameras, info = reconstruction_cameras(source, conditioning, frames)   # frames: only for sfm

The paper reconstructs better from COLMAP poses of the generated video than from the cameras it was conditioned
on: the video model follows its camera condition only approximately, and the LaLRM wants the poses the frames
were actually seen from. Estimated poses come in their own similarity frame (any rotation, origin and scale);
`align_to_conditioning` maps them into the conditioning world:

  * re-basing: the first registered frame (frame 0, the input image, unless SfM missed it) is placed exactly at
    its conditioning pose, and every other estimated pose keeps its pose relative to it, so the scene's frame
    (the first camera's) and the input view are the conditioning ones;
  * scale: the least-squares factor s that fits the estimated distances of the camera centres from that anchor
    camera to the conditioning ones, s = sum(d_est d_cond) / sum(d_est^2): a fit of the path's extent, blind to
    where the generated path bends away from the conditioning one. A path that does not move (a pure pan: no
    extent to match, in either pose set) cannot be scaled: `AlignmentError`;
  * unregistered frames are filled with their conditioning pose (a warning lists them), so the LaLRM still gets
    one camera per frame; `reconstruction_cameras` refuses the estimate (falls back to the conditioning cameras)
    when fewer than `min_registered(F)` frames registered;
  * intrinsics: the conditioning ones are kept. The video model drew the frames for those intrinsics, and a
    focal length self-calibrated from one short generated video is less reliable than the known one; SfM here
    is even run with them fixed. A COLMAP model whose focal length (rescaled to the video size) differs by more
    than 10% gets a warning.

Sources (`PoseSource`, the `--poses` flag of `wonderland generate` and `eval scene`):
  conditioning        the cameras the video was conditioned on (the default; nothing estimated);
  colmap:<model dir>  a COLMAP model (text or binary, `camera.read_colmap`) of the video's frames: one registered
                      image per frame, matched to frames in sorted-name order (frame_00000.png, ...);
  sfm                 pycolmap (`pip install 'wonderland_jax[sfm]'`) on the decoded frames: SIFT features,
                      exhaustive (F <= 32) or sequential matching, incremental mapping with the conditioning
                      intrinsics fixed. Too few registered frames, an empty model, a failed alignment or
                      per-frame intrinsics fall back to the conditioning cameras with a warning.
`reconstruction_cameras` returns, besides the cameras, a JSON-able record of what was used (report.json's
"poses"): requested and used source, registered frames, scale, fallback reason, the distance of the aligned
path from the conditioning one.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wonderland_jax.camera.camera import Camera, rigid_inverse
from wonderland_jax.camera.io import read_colmap
from wonderland_jax.camera.poses import normalize_poses
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import write_png

logger = logging.getLogger("wonderland_jax")

POSE_SOURCES = ("conditioning", "colmap", "sfm")
POSES_HELP = ("conditioning (the cameras the video was conditioned on), colmap:<model dir> (a COLMAP model, text or "
              "binary, of the generated video's frames: one image per frame in sorted-name order) or sfm "
              "(structure-from-motion on the decoded video with pycolmap, pip install 'wonderland_jax[sfm]'; falls "
              "back to the conditioning cameras with a warning when too few frames register); estimated poses are "
              "re-based on the first frame and scaled to the conditioning path, intrinsics kept")
SFM_INSTALL = "pip install 'wonderland_jax[sfm]'"
EXHAUSTIVE_UP_TO = 32  # frames: exhaustive matching up to this many, sequential beyond
FOCAL_MISMATCH = 0.1  # relative focal-length difference of a COLMAP model that gets a warning


class AlignmentError(WonderlandError):
  """Estimated poses that cannot be aligned to the conditioning path (too few, or no extent to scale)."""


@dataclasses.dataclass(frozen=True)
class PoseSource:
  """Where the reconstruction cameras come from: kind in POSE_SOURCES; model_dir for 'colmap'."""

  kind: str = "conditioning"
  model_dir: Path | None = None

  @classmethod
  def parse(cls, text: str | PoseSource) -> PoseSource:
    """'conditioning' | 'sfm' | 'colmap:<model dir>' -> PoseSource; `WonderlandError` naming --poses otherwise."""
    if isinstance(text, PoseSource):
      return text
    if text in ("conditioning", "sfm"):
      return cls(text)
    if text.startswith("colmap:") and text[len("colmap:"):]:
      return cls("colmap", Path(text[len("colmap:"):]))
    raise WonderlandError(f"--poses {text!r}: expected conditioning, colmap:<model dir> or sfm")

  def __str__(self) -> str:
    return f"colmap:{self.model_dir}" if self.kind == "colmap" else self.kind

  @property
  def needs_frames(self) -> bool:
    """Whether `reconstruction_cameras` needs the decoded frames (sfm)."""
    return self.kind == "sfm"

  def check(self, num_frames: int | None = None) -> None:
    """Fails early (before sampling): sfm without pycolmap; colmap without a readable model, or (given
    num_frames) one whose image count differs."""
    if self.kind == "sfm":
      _import_pycolmap()
    elif self.kind == "colmap":
      read_video_model(self.model_dir, num_frames)


def pose_source_flag(text: str) -> str:
  """argparse type of --poses: checks the syntax (PoseSource.parse), keeps the text (JSON-able settings)."""
  try:
    PoseSource.parse(text)
  except WonderlandError:
    raise argparse.ArgumentTypeError(f"expected conditioning, colmap:<model dir> or sfm, got {text!r}") from None
  return text


def min_registered(num_frames: int) -> int:
  """The fewest registered frames an estimate needs to be used: half the frames, at least 3 (or F if fewer)."""
  return min(num_frames, max(3, math.ceil(num_frames / 2)))


def _tolerance(positions: np.ndarray) -> float:
  """Below this a path extent is zero: 16 float32 eps of the coordinates' size (at least 1e-9)."""
  return max(1e-9, 16 * float(np.finfo(np.float32).eps) * max(1.0, float(np.max(np.abs(positions)))))


def align_to_conditioning(c2w: np.ndarray, conditioning: Camera) -> tuple[Camera, dict[str, Any]]:
  """Estimated camera->world poses (F, 4, 4) (or (F, 3, 4); any similarity frame and scale, OpenCV axes; NaN
  rows for frames not registered) -> (F cameras in the conditioning world and units with the conditioning
  intrinsics and size, a record). Module docstring: the first registered frame is the anchor, placed at its
  conditioning pose; the scale fits the centres' distances from it; unregistered frames keep their
  conditioning pose. Record: registered, filled (frame indices), anchor, scale (conditioning units per
  estimated unit), centre_rms (aligned vs conditioning centres, relative to the conditioning path's extent),
  rotation_deg (mean angle between aligned and conditioning orientations).

  Raises `AlignmentError` with fewer than 2 registered frames or when either path has no extent."""
  reference = np.asarray(conditioning.c2w, np.float64)
  num_frames = len(reference)
  c2w = np.asarray(c2w, np.float64)
  if c2w.shape[-2:] == (3, 4):
    c2w = np.concatenate([c2w, np.broadcast_to([0.0, 0.0, 0.0, 1.0], c2w.shape[:-2] + (1, 4))], -2)
  if c2w.shape != (num_frames, 4, 4):
    raise WonderlandError(f"align_to_conditioning: {num_frames} conditioning cameras but estimated poses of "
                          f"shape {c2w.shape}")
  registered = np.flatnonzero(np.isfinite(c2w).all(axis=(1, 2)))
  if len(registered) < 2:
    raise AlignmentError(f"{len(registered)} of {num_frames} frames registered; at least 2 are needed to scale")
  anchor = int(registered[0])
  # Frame rotations are orthonormalised (SVD): estimated poses may carry round-off from a text file.
  relative = rigid_inverse(_orthonormal(c2w[anchor])) @ _orthonormal(c2w[registered])
  target = rigid_inverse(reference[anchor]) @ reference[registered]
  d_estimated = np.linalg.norm(relative[:, :3, 3], axis=-1)
  d_conditioning = np.linalg.norm(target[:, :3, 3], axis=-1)
  if d_conditioning.max() <= _tolerance(reference[:, :3, 3]):
    raise AlignmentError("the conditioning cameras do not move (a pure rotation): there is no path extent to "
                         "scale the estimated poses to")
  if d_estimated.max() <= _tolerance(c2w[registered, :3, 3]):
    raise AlignmentError("the estimated cameras do not move: their scale is undetermined")
  scale = float(np.sum(d_estimated * d_conditioning) / np.sum(d_estimated ** 2))
  relative[:, :3, 3] *= scale
  aligned = reference.copy()
  aligned[registered] = reference[anchor] @ relative
  filled = sorted(set(range(num_frames)) - set(registered.tolist()))
  if filled:
    logger.warning("poses: %d of %d frames not registered (%s); they keep their conditioning poses", len(filled),
                   num_frames, _frame_list(filled))
  centre_rms = float(np.sqrt(np.mean(np.sum((aligned[:, :3, 3] - reference[:, :3, 3]) ** 2, -1))))
  record = dict(registered=len(registered), filled=filled, anchor=anchor, scale=scale,
                centre_rms=centre_rms / float(d_conditioning.max()),
                rotation_deg=float(np.degrees(np.mean(rotation_angles(aligned[:, :3, :3], reference[:, :3, :3])))))
  cameras = Camera.from_viewmat(rigid_inverse(aligned).astype(np.float32), np.asarray(conditioning.K, np.float32),
                                conditioning.width, conditioning.height)
  return cameras, record


def rebased_cameras(cameras: Camera, width: int, height: int) -> Camera:
  """F cameras re-based on the first (its viewmat the identity), in their own units, resized to (width, height):
  the conditioning path in the frame of a scene reconstructed from it or from poses aligned to it."""
  viewmats, _ = normalize_poses(np.asarray(cameras.viewmat, np.float64), mode="none")
  return Camera.from_viewmat(viewmats.astype(np.float32), np.asarray(cameras.K, np.float32), cameras.width,
                             cameras.height).resized(width, height)


def rotation_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(..., 3, 3) rotations -> (...) angles (radians) of a^T b: atan2 of its sine and cosine, accurate near 0
  (arccos of the trace alone loses float32 poses' small angles to round-off)."""
  r = np.swapaxes(a, -1, -2) @ b
  axis = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
  sine, cosine = 0.5 * np.linalg.norm(axis, axis=-1), 0.5 * (np.trace(r, axis1=-2, axis2=-1) - 1)
  return np.arctan2(sine, cosine)


def _orthonormal(c2w: np.ndarray) -> np.ndarray:
  """(..., 4, 4) poses with their rotation blocks projected to the nearest rotation."""
  u, _, vt = np.linalg.svd(c2w[..., :3, :3])
  out = c2w.copy()
  out[..., :3, :3] = u @ vt
  return out


def _frame_list(frames: list[int], limit: int = 10) -> str:
  shown = ", ".join(map(str, frames[:limit]))
  return shown + (f", ... {len(frames) - limit} more" if len(frames) > limit else "")


def read_video_model(model_dir: str | Path, num_frames: int | None = None,
                     conditioning: Camera | None = None) -> np.ndarray:
  """A COLMAP model (text or binary) of a video's frames -> (F, 4, 4) float64 camera->world in its own frame,
  images in sorted-name order. `InputFileError` naming `model_dir` when it is not a model or (given num_frames)
  its image count differs. Given `conditioning`, warns when its focal length at the video size differs from
  theirs by more than FOCAL_MISMATCH (theirs are used)."""
  poses = read_colmap(model_dir)
  if num_frames is not None and len(poses) != num_frames:
    raise InputFileError(f"{model_dir}: a COLMAP model of {len(poses)} images but the video has {num_frames} "
                         "frames; --poses colmap:<dir> needs one registered image per frame (matched in "
                         "sorted-name order)")
  if conditioning is not None:
    theirs = np.asarray(poses.cameras.K[:, 0, 0]) / poses.cameras.width
    ours = np.asarray(conditioning.K[:, 0, 0]) / conditioning.width
    difference = float(np.max(np.abs(theirs / ours - 1)))
    if difference > FOCAL_MISMATCH:
      logger.warning("%s: its focal length differs from the conditioning cameras' by up to %.0f%%; the "
                     "conditioning intrinsics are used", model_dir, 100 * difference)
  return rigid_inverse(np.asarray(poses.cameras.viewmat, np.float64))


def _import_pycolmap():
  try:
    import pycolmap  # noqa: PLC0415 (an optional dependency: the sfm extra)
  except ImportError:
    raise WonderlandError(f"--poses sfm needs pycolmap: {SFM_INSTALL}") from None
  return pycolmap


def estimate_poses_sfm(frames: np.ndarray, cameras: Camera, workdir: str | Path | None = None) -> np.ndarray:
  """Structure-from-motion with pycolmap on video frames (F, H, W, 3) in [0, 1] -> (F, 4, 4) float64
  camera->world poses in COLMAP's frame and units (OpenCV axes), NaN rows for frames not registered (all NaN
  when no model was built). The F `cameras`' intrinsics, at the frames' size, are given to COLMAP and held
  fixed; they must be one shared matrix (`AlignmentError` otherwise). The frames, database and model go to
  `workdir` (default a temporary folder, removed)."""
  pycolmap = _import_pycolmap()
  num_frames, height, width = frames.shape[:3]
  K = np.asarray(cameras.resized(width, height).K, np.float64)
  if not np.allclose(K, K[0], rtol=1e-4):
    raise AlignmentError("the conditioning intrinsics change between frames; sfm runs with one shared camera")
  if workdir is None:
    with tempfile.TemporaryDirectory(prefix="wonderland-sfm-") as temporary:
      return estimate_poses_sfm(frames, cameras, temporary)
  workdir = Path(workdir)
  images, sparse, database = workdir / "images", workdir / "sparse", workdir / "database.db"
  images.mkdir(parents=True, exist_ok=True)
  sparse.mkdir(exist_ok=True)
  names = [f"frame_{index:05d}.png" for index in range(num_frames)]
  for name, frame in zip(names, frames):
    write_png(images / name, frame)
  reader = pycolmap.ImageReaderOptions()
  reader.camera_model = "PINHOLE"
  reader.camera_params = ",".join(f"{value:.10g}" for value in (K[0, 0, 0], K[0, 1, 1], K[0, 0, 2], K[0, 1, 2]))
  options = pycolmap.IncrementalPipelineOptions()
  options.multiple_models = False
  options.min_model_size = min_registered(num_frames)
  options.ba_refine_focal_length = options.ba_refine_principal_point = options.ba_refine_extra_params = False
  options.mapper.abs_pose_refine_focal_length = options.mapper.abs_pose_refine_extra_params = False
  options.random_seed = 0
  quiet = pycolmap.logging.minloglevel
  pycolmap.logging.minloglevel = 0 if logger.isEnabledFor(logging.DEBUG) else 2  # COLMAP's INFO lines: with -v
  try:
    pycolmap.extract_features(database, images, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                              reader_options=reader, device=pycolmap.Device.cpu)
    match = pycolmap.match_exhaustive if num_frames <= EXHAUSTIVE_UP_TO else pycolmap.match_sequential
    match(database, device=pycolmap.Device.cpu)
    models = pycolmap.incremental_mapping(database, images, sparse, options)
  finally:
    pycolmap.logging.minloglevel = quiet
  c2w = np.full((num_frames, 4, 4), np.nan)
  if not models:
    return c2w
  model = max(models.values(), key=lambda reconstruction: reconstruction.num_reg_images())
  index = {name: number for number, name in enumerate(names)}
  for image in model.images.values():
    if image.has_pose and image.name in index:
      viewmat = np.eye(4)
      viewmat[:3] = image.cam_from_world().matrix()
      c2w[index[image.name]] = rigid_inverse(viewmat)
  return c2w


def reconstruction_cameras(source: PoseSource | str, conditioning: Camera,
                           frames: np.ndarray | None = None) -> tuple[Camera, dict[str, Any]]:
  """The F cameras the LaLRM reconstructs with (module docstring) and a JSON-able record: requested, used
  ('conditioning' | 'colmap' | 'sfm'), frames, and for estimated poses `align_to_conditioning`'s record, for a
  fallback its reason. `frames` (F, H, W, 3) in [0, 1]: the decoded video, needed for sfm.

  colmap errors (no model, a count mismatch, a path that cannot be scaled) raise `InputFileError` naming the
  model; sfm failures (pycolmap errors, too few registered frames, an alignment error) fall back to the
  conditioning cameras with a warning."""
  source = PoseSource.parse(source)
  num_frames = len(conditioning)
  record: dict[str, Any] = dict(requested=str(source), used="conditioning", frames=num_frames)
  if source.kind == "conditioning":
    return conditioning, record
  if source.kind == "colmap":
    estimated = read_video_model(source.model_dir, num_frames, conditioning)
    try:
      cameras, alignment = align_to_conditioning(estimated, conditioning)
    except AlignmentError as error:
      raise InputFileError(f"{source.model_dir}: {error}") from None
  else:
    if frames is None or len(frames) != num_frames:
      raise WonderlandError(f"--poses sfm needs the {num_frames} decoded frames, got "
                            f"{'none' if frames is None else len(frames)}")
    try:
      estimated = estimate_poses_sfm(frames, conditioning)
      registered = int(np.isfinite(estimated).all(axis=(1, 2)).sum())
      if registered < min_registered(num_frames):
        raise AlignmentError(f"{registered} of {num_frames} frames registered (at least "
                             f"{min_registered(num_frames)} needed)")
      cameras, alignment = align_to_conditioning(estimated, conditioning)
    except (AlignmentError, RuntimeError, ValueError) as error:  # pycolmap raises RuntimeError / ValueError
      logger.warning("--poses sfm: %s; reconstructing from the conditioning cameras", error)
      return conditioning, record | dict(fallback=str(error))
  logger.info("poses from %s: %d of %d frames registered, scale %.4g, aligned path %.3g of its extent and "
              "%.2f degrees from the conditioning one", source, alignment["registered"], num_frames,
              alignment["scale"], alignment["centre_rms"], alignment["rotation_deg"])
  return cameras, record | dict(used=source.kind) | alignment
