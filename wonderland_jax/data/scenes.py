"""Multi-view scenes on disk: RealEstate10K / ACID, DL3DV (nerfstudio) and COLMAP models (text or binary).

A `Scene` is a sequence of N source frames (image files, frames of a video, or frames rendered on demand)
with one camera per frame: `viewmats` (N, 4, 4) world->camera, OpenCV axes, and `intrinsics` (N, 3, 3) in
pixels for the scene's `width` x `height` images (pixel centres at +0.5, see `wonderland_jax.camera`).

Layouts read by `scan_dataset(root, format)`:

  realestate10k / acid   `root/poses/<scene>.txt` (or `root/<scene>.txt`): a RealEstate10K pose file; frames in
                         `root/frames/<scene>/` (or `root/<scene>/`) as images named by the pose file's
                         timestamps (`45378000.png`) or by index (`frame_00000.png`, sorted naturally, one per
                         camera), or a video `root/videos/<scene>.mp4` (or `root/frames/<scene>.mp4`,
                         `root/<scene>.mp4`): frame i is camera i when the counts agree, else frame
                         round(timestamp_us * fps / 1e6). The image size (needed for the normalised
                         intrinsics) is read from the first frame. Videos are decoded from the start on
                         every read: extract frames to folders for training at scale.
  dl3dv                  every `transforms.json` below `root` (nerfstudio, as DL3DV ships it); images at
                         `file_path` relative to the JSON, or with its first folder replaced by `images_dir`
                         (DL3DV's downsampled `images_4/`).
  colmap                 every COLMAP model below `root`, text or binary (COLMAP's default output):
                         `<scene>/sparse/0/{cameras,images}.{txt,bin}` or `<scene>/{cameras,images}.{txt,bin}`
                         (text preferred where a folder has both), with its images in
                         `<scene>/<images_dir>/NAME` (`images_dir` defaults to `images`).

When the images on disk are smaller or larger than the size the cameras were calibrated for (dl3dv's
`images_4`, a downsampled COLMAP folder), the intrinsics are scaled per axis to the images' size.

Bad data (a missing frame, a pose count that differs from the frame count, a malformed or non-finite pose, an
unreadable image) raises `InputFileError` naming the file. Where many scenes are read, a `DataErrors` policy
decides: `on_error="raise"` stops at the first bad scene, `on_error="skip"` logs it and counts it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import imageio.v2 as iio2
import imageio.v3 as iio3
import numpy as np

from wonderland_jax.camera.io import PoseSequence, read_colmap, read_nerfstudio, read_realestate10k
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import read_image

logger = logging.getLogger(__name__)

FORMATS = ("realestate10k", "acid", "dl3dv", "colmap")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
ON_ERROR = ("skip", "raise")
MAX_LISTED = 3  # missing files named in one message


class DataErrors:
  """The bad-data policy of a reader, and the tally of what it skipped (thread-safe).

  on_error: 'raise' re-raises every error handed to `handle`; 'skip' logs it as a warning and counts it.
  """

  def __init__(self, on_error: str = "skip"):
    if on_error not in ON_ERROR:
      raise WonderlandError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    self.on_error = on_error
    self._lock = threading.Lock()
    self._messages: list[str] = []

  def handle(self, error: WonderlandError) -> None:
    """Raises `error` (on_error='raise') or records it and returns (on_error='skip')."""
    if self.on_error == "raise":
      raise error
    with self._lock:
      self._messages.append(str(error))
      count = len(self._messages)
    logger.warning("skipping bad data (%d so far): %s", count, error)

  @property
  def count(self) -> int:
    with self._lock:
      return len(self._messages)

  @property
  def messages(self) -> list[str]:
    """Every skipped error's message, in the order they happened."""
    with self._lock:
      return list(self._messages)


class FrameSource(Protocol):
  """Random access to a scene's N frames."""

  def __len__(self) -> int: ...

  def read(self, indices: Sequence[int], height: int, width: int) -> np.ndarray:
    """Frames `indices` (repeats allowed) as (n, height, width, 3) float32 in [0, 1]; InputFileError naming
    the file when one cannot be read or is not height x width."""
    ...


@dataclasses.dataclass(frozen=True)
class ImageFrames:
  """Frames stored as one image file each."""

  paths: tuple[Path, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def read(self, indices: Sequence[int], height: int, width: int) -> np.ndarray:
    images = {}
    for index in dict.fromkeys(int(i) for i in indices):  # each file once, in first-use order
      image = read_image(self.paths[index])
      if image.shape[:2] != (height, width):
        raise InputFileError(f"{self.paths[index]}: image is {image.shape[1]}x{image.shape[0]} but the scene's "
                             f"cameras are for {width}x{height} (all frames of a scene must share one size)")
      images[index] = image
    return np.stack([images[int(i)] for i in indices])


@dataclasses.dataclass(frozen=True)
class VideoFrames:
  """Frames of a video file: camera i is video frame `frame_numbers[i]` (decoded in order with ffmpeg)."""

  path: Path
  frame_numbers: tuple[int, ...]

  def __len__(self) -> int:
    return len(self.frame_numbers)

  def read(self, indices: Sequence[int], height: int, width: int) -> np.ndarray:
    wanted = {self.frame_numbers[int(i)] for i in indices}
    last = max(wanted)
    decoded, count = {}, 0
    try:
      reader = iio2.get_reader(self.path, format="FFMPEG")
      try:
        for count, frame in enumerate(reader, 1):
          if count - 1 in wanted:
            decoded[count - 1] = frame
          if count > last:
            break
      finally:
        reader.close()
    except (OSError, RuntimeError, ValueError, IndexError) as err:
      raise InputFileError(f"{self.path}: cannot decode video: {err}") from err
    if last not in decoded:
      raise InputFileError(f"{self.path}: the video ends after {count} frames; frame {last} is missing")
    frames = []
    for i in indices:
      frame = np.asarray(decoded[self.frame_numbers[int(i)]])[..., :3]
      if frame.shape[:2] != (height, width):
        raise InputFileError(f"{self.path}: frame {self.frame_numbers[int(i)]} is {frame.shape[1]}x{frame.shape[0]}"
                             f", expected {width}x{height}")
      frames.append(frame.astype(np.float32) / 255.0)
    return np.stack(frames)


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
  """N frames and their cameras; see the module docstring.

  name: the scene's id (file stem or folder relative to the dataset root).
  source: the pose file / model the cameras came from (named in error messages).
  frames: the frames' `FrameSource`.
  viewmats: (N, 4, 4) float64 world->camera, OpenCV axes.
  intrinsics: (N, 3, 3) float64 pixels, for width x height.
  width, height: the frames' size in pixels.
  dataset: the format name ('realestate10k', 'acid', 'dl3dv', 'colmap', 'synthetic'); picks the default
    clip stride (`clips.DEFAULT_STRIDES`).
  """

  name: str
  source: str | Path
  frames: FrameSource
  viewmats: np.ndarray
  intrinsics: np.ndarray
  width: int
  height: int
  dataset: str

  def __len__(self) -> int:
    return len(self.viewmats)

  def load_frames(self, indices: Sequence[int]) -> np.ndarray:
    """(n, height, width, 3) float32 in [0, 1] for frame `indices` (repeats allowed)."""
    return self.frames.read(indices, self.height, self.width)

  def validate(self) -> Scene:
    """Checks shapes and finiteness; InputFileError naming `source` and the first bad frame. Returns self."""
    count = len(self.viewmats)
    if count == 0:
      raise InputFileError(f"{self.source}: scene {self.name!r} has no cameras")
    if self.viewmats.shape != (count, 4, 4) or self.intrinsics.shape != (count, 3, 3):
      raise InputFileError(f"{self.source}: cameras must be (N, 4, 4) and (N, 3, 3), got {self.viewmats.shape} and "
                           f"{self.intrinsics.shape}")
    if len(self.frames) != count:
      raise InputFileError(f"{self.source}: {count} cameras but {len(self.frames)} frames")
    finite = np.isfinite(self.viewmats).all((1, 2)) & np.isfinite(self.intrinsics).all((1, 2))
    if not finite.all():
      raise InputFileError(f"{self.source}: camera {int(np.argmin(finite))} has a non-finite pose or intrinsics")
    return self


@dataclasses.dataclass(frozen=True)
class SceneRef:
  """Where a scene lives, before its files are parsed; `load()` reads it (the expensive part).

  format: one of FORMATS. poses: pose file (.txt), transforms.json or COLMAP model directory.
  frames: frames folder or video (realestate10k / acid), else the folder image names are relative to.
  images_dir: dl3dv: replaces the first folder of each `file_path`; colmap: unused (already in `frames`).
  """

  format: str
  name: str
  poses: Path
  frames: Path
  images_dir: str | None = None

  def load(self) -> Scene:
    """Parses the poses and lists the frames; InputFileError naming the file at fault."""
    if self.format in ("realestate10k", "acid"):
      return read_realestate10k_scene(self.poses, self.frames, name=self.name, dataset=self.format)
    if self.format == "dl3dv":
      return read_nerfstudio_scene(self.poses, images_dir=self.images_dir, name=self.name)
    if self.format == "colmap":
      return read_colmap_scene(self.poses, self.frames, name=self.name)
    raise WonderlandError(f"unknown dataset format {self.format!r}; valid: {', '.join(FORMATS)}")


@dataclasses.dataclass
class DatasetScan:
  """The result of `scan_dataset`: the usable scenes and what was skipped (messages naming the files)."""

  root: Path
  format: str
  scenes: list[SceneRef]
  skipped: list[str]

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  def __len__(self) -> int:
    return len(self.scenes)


# ---------------------------------------------------------------------------------------------- readers


def read_realestate10k_scene(pose_path, frames_path, *, name: str | None = None,
                             dataset: str = "realestate10k") -> Scene:
  """A RealEstate10K / ACID scene: a pose file and a folder of images or a video (see module docstring)."""
  pose_path, frames_path = Path(pose_path), Path(frames_path)
  name = name or pose_path.stem
  if frames_path.is_dir():
    return _re10k_from_images(pose_path, frames_path, name, dataset)
  if frames_path.is_file():
    return _re10k_from_video(pose_path, frames_path, name, dataset)
  raise InputFileError(f"{frames_path}: no such frames folder or video (for the poses in {pose_path})")


def _re10k_from_images(pose_path: Path, frames_dir: Path, name: str, dataset: str) -> Scene:
  images = sorted((p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
  if not images:
    raise InputFileError(f"{frames_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) for the poses in {pose_path}")
  width, height = _image_size(images[0])
  poses = read_realestate10k(pose_path, width, height)
  by_stem = {path.stem: path for path in images}
  timestamps = [str(t) for t in poses.timestamps]
  if any(t in by_stem for t in timestamps):  # named by timestamp: every camera needs its image
    missing = [t for t in timestamps if t not in by_stem]
    if missing:
      raise InputFileError(f"{frames_dir}: missing {len(missing)} of {len(timestamps)} frames named by the "
                           f"timestamps in {pose_path}, e.g. {_listed(missing)}")
    paths = [by_stem[t] for t in timestamps]
  elif len(images) == len(timestamps):
    paths = images
  else:
    raise InputFileError(f"{frames_dir}: {len(images)} images but {pose_path} has {len(timestamps)} cameras, and "
                         "no image is named by a timestamp of the pose file")
  return _scene(name, pose_path, ImageFrames(tuple(paths)), poses, width, height, dataset)


def _re10k_from_video(pose_path: Path, video_path: Path, name: str, dataset: str) -> Scene:
  try:
    reader = iio2.get_reader(video_path, format="FFMPEG")
    try:
      meta = reader.get_meta_data()
      num_video_frames = reader.count_frames()
    finally:
      reader.close()
  except (OSError, RuntimeError, ValueError) as err:
    raise InputFileError(f"{video_path}: cannot read video: {err}") from err
  width, height = (int(v) for v in meta["size"])
  poses = read_realestate10k(pose_path, width, height)
  if num_video_frames == len(poses):
    numbers = np.arange(len(poses))
  else:
    fps = float(meta.get("fps") or 0)
    if fps <= 0:
      raise InputFileError(f"{video_path}: unknown frame rate; cannot match the timestamps of {pose_path}")
    numbers = np.rint(poses.timestamps.astype(np.float64) * 1e-6 * fps).astype(np.int64)
    beyond = numbers >= num_video_frames
    if beyond.any():
      raise InputFileError(f"{video_path}: {num_video_frames} frames ({fps:g} fps) but {pose_path} has "
                           f"{len(poses)} cameras up to timestamp {poses.timestamps.max()} us (frame "
                           f"{numbers.max()}); {int(beyond.sum())} cameras have no frame")
  return _scene(name, pose_path, VideoFrames(video_path, tuple(int(n) for n in numbers)), poses, width, height,
                dataset)


def read_nerfstudio_scene(path, *, images_dir: str | None = None, name: str | None = None) -> Scene:
  """A DL3DV / nerfstudio scene: `transforms.json` (or its folder) and the images its `file_path`s name.

  images_dir: replaces the first folder of every `file_path` (DL3DV: 'images_4' for 'images/frame_00001.png').
  """
  path = Path(path)
  if path.is_dir():
    path = path / "transforms.json"
  poses = read_nerfstudio(path)
  paths = []
  for file_path in poses.names:
    relative = Path(file_path)
    if images_dir is not None:
      relative = Path(images_dir, *relative.parts[1:]) if len(relative.parts) > 1 else Path(images_dir, relative)
    paths.append(path.parent / relative)
  _check_exist(paths, path)
  return _scene_from_files(name or path.parent.name, path, paths, poses, "dl3dv")


def read_colmap_scene(model_dir, images_dir, *, name: str | None = None) -> Scene:
  """A COLMAP model, text or binary (`model_dir` or its sparse/0), with image NAMEs relative to `images_dir`."""
  model_dir, images_dir = Path(model_dir), Path(images_dir)
  poses = read_colmap(model_dir)
  paths = [images_dir / image_name for image_name in poses.names]
  _check_exist(paths, model_dir)
  return _scene_from_files(name or model_dir.name, model_dir, paths, poses, "colmap")


def _scene_from_files(name: str, source: Path, paths: list[Path], poses: PoseSequence, dataset: str) -> Scene:
  """Scene of one image file per camera; intrinsics rescaled when the images are not the calibrated size."""
  width, height = _image_size(paths[0])
  return _scene(name, source, ImageFrames(tuple(paths)), poses, width, height, dataset)


def _scene(name: str, source: Path, frames: FrameSource, poses: PoseSequence, width: int, height: int,
           dataset: str) -> Scene:
  cameras = poses.cameras
  intrinsics = np.asarray(cameras.K, np.float64)
  if (cameras.width, cameras.height) != (width, height):
    scale_x, scale_y = width / cameras.width, height / cameras.height
    if abs(scale_x / scale_y - 1) > 0.01:
      logger.warning("%s: images are %dx%d but the cameras are for %dx%d (aspect ratio differs); scaling the "
                     "intrinsics per axis", source, width, height, cameras.width, cameras.height)
    intrinsics = np.diag([scale_x, scale_y, 1.0]) @ intrinsics
  viewmats = np.asarray(cameras.viewmat, np.float64)
  return Scene(name, source, frames, viewmats, intrinsics, int(width), int(height), dataset).validate()


# ------------------------------------------------------------------------------------------------- scan


def scan_dataset(root, format: str, *, on_error: str | DataErrors = "skip", images_dir: str | None = None,
                 check: bool = False, min_frames: int = 1) -> DatasetScan:
  """Lists the scenes of a dataset in one of FORMATS (layouts in the module docstring), sorted by name.

  Args:
    root: the dataset's folder.
    format: 'realestate10k', 'acid', 'dl3dv' or 'colmap'.
    on_error: 'skip' (log, count in `skipped`, go on) or 'raise' (InputFileError at the first bad scene), or a
      `DataErrors` to share its tally.
    images_dir: dl3dv: folder that replaces the first folder of every file_path (e.g. 'images_4'); colmap: the
      image folder inside each scene (default 'images').
    check: also parse every scene's poses and list its frames now (slower; otherwise only the presence of the
      pose file and the frames is checked, and the rest when a scene is first loaded).
    min_frames: with check, scenes with fewer frames are skipped like bad data.
  """
  root = Path(root)
  errors = on_error if isinstance(on_error, DataErrors) else DataErrors(on_error)
  if format not in FORMATS:
    raise WonderlandError(f"unknown dataset format {format!r}; valid: {', '.join(FORMATS)}")
  if not root.is_dir():
    raise InputFileError(f"{root}: no such dataset folder")
  skipped_before = errors.messages
  refs = []
  finders = {"realestate10k": _find_re10k, "acid": _find_re10k, "dl3dv": _find_dl3dv, "colmap": _find_colmap}
  for ref_or_error in finders[format](root, format, images_dir):
    if isinstance(ref_or_error, WonderlandError):
      errors.handle(ref_or_error)
      continue
    if check:
      try:
        scene = ref_or_error.load()
        if len(scene) < min_frames:
          raise InputFileError(f"{scene.source}: {len(scene)} frames, fewer than the {min_frames} needed")
      except WonderlandError as err:
        errors.handle(err)
        continue
    refs.append(ref_or_error)
  skipped = errors.messages[len(skipped_before):]
  if not refs:
    detail = f"; {len(skipped)} skipped, first: {skipped[0]}" if skipped else ""
    raise InputFileError(f"{root}: no usable {format} scenes found{detail}")
  logger.info("%s: %d %s scenes (%d skipped)", root, len(refs), format, len(skipped))
  return DatasetScan(root, format, refs, skipped)


def _find_re10k(root: Path, format: str, images_dir: str | None):
  poses_root = root / "poses" if (root / "poses").is_dir() else root
  pose_files = sorted(p for p in poses_root.glob("*.txt") if p.is_file())
  if not pose_files:
    raise InputFileError(f"{poses_root}: no RealEstate10K pose files (*.txt)")
  for pose_path in pose_files:
    scene = pose_path.stem
    candidates = [root / "frames" / scene, root / scene]
    candidates += [folder / f"{scene}{ext}" for folder in (root / "videos", root / "frames", root)
                   for ext in VIDEO_EXTENSIONS]
    found = next((c for c in candidates if c.is_dir() or c.is_file()), None)
    if found is None:
      yield InputFileError(f"{pose_path}: no frames for scene {scene!r}; looked for a folder "
                           f"{candidates[0]} or {candidates[1]}, or a video {root / 'videos' / scene}.mp4")
      continue
    yield SceneRef(format, scene, pose_path, found)


def _find_dl3dv(root: Path, format: str, images_dir: str | None):
  found = sorted(root.rglob("transforms.json"))
  if not found:
    raise InputFileError(f"{root}: no transforms.json below this folder (expected DL3DV / nerfstudio scenes)")
  for path in found:
    name = str(path.parent.relative_to(root)) if path.parent != root else root.name
    yield SceneRef(format, name, path, path.parent, images_dir)


def _find_colmap(root: Path, format: str, images_dir: str | None):
  models = sorted({p.parent for suffix in ("txt", "bin") for p in root.rglob(f"cameras.{suffix}")
                   if (p.parent / f"images.{suffix}").is_file()})
  if not models:
    raise InputFileError(f"{root}: no COLMAP model (cameras.txt + images.txt or cameras.bin + images.bin) below "
                         "this folder")
  for model in models:
    scene_dir = model.parent.parent if model.parent.name == "sparse" else model
    images = scene_dir / (images_dir or "images")
    name = str(scene_dir.relative_to(root)) if scene_dir != root else root.name
    if not images.is_dir():
      yield InputFileError(f"{model}: no image folder {images} for this COLMAP model")
      continue
    yield SceneRef(format, name, model, images)


# ----------------------------------------------------------------------------------------------- helpers


def _image_size(path: Path) -> tuple[int, int]:
  """(width, height) of an image file from its header; InputFileError naming it if unreadable."""
  if not path.is_file():
    raise InputFileError(f"{path}: image file not found")
  try:
    shape = iio3.improps(path, plugin="pillow").shape
  except Exception as err:  # decoders raise many types (OSError, ValueError, SyntaxError, ...)
    raise InputFileError(f"{path}: cannot read image: {err}") from err
  return int(shape[1]), int(shape[0])


def _check_exist(paths: list[Path], source: Path) -> None:
  missing = [str(p) for p in paths if not p.is_file()]
  if missing:
    raise InputFileError(f"{source}: {len(missing)} of {len(paths)} images are missing, e.g. {_listed(missing)}")


def _listed(items: list[str]) -> str:
  more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
  return ", ".join(items[:MAX_LISTED]) + more


def _natural_key(path: Path) -> list:
  """Sort key with digit runs compared as numbers: frame_2 < frame_10."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
