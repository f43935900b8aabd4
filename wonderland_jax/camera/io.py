"""Camera-pose files: RealEstate10K / ACID, nerfstudio `transforms.json` (DL3DV) and COLMAP text models.

Every reader returns a `PoseSequence` whose `cameras` are float32, OpenCV convention (see `camera.py`),
sorted in the file's natural order (RealEstate10K: file order; nerfstudio: by file_path; COLMAP: by
image NAME). Parsing is numpy on the host. Malformed input raises `InputFileError` naming the file and
the line (text formats) or key (JSON) at fault. Lens distortion is ignored (pinhole only), with one
warning per file when any distortion coefficient is nonzero.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import struct
from pathlib import Path

import numpy as np

from wonderland_jax.camera.camera import Camera, check_cameras, rigid_inverse
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_path

logger = logging.getLogger(__name__)

REALESTATE10K_FIELDS = 19  # timestamp_us fx fy cx cy 0 0, then a row-major 3x4 world->camera matrix
NERFSTUDIO_INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
NERFSTUDIO_DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
# nerfstudio `camera_model` values of perspective cameras (its CAMERA_MODEL_TO_TYPE -> PERSPECTIVE; OPENCV is its
# default when the key is absent); the others (OPENCV_FISHEYE, EQUIRECTANGULAR, FISHEYE624, ...) are refused.
NERFSTUDIO_PERSPECTIVE = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")
# COLMAP camera model -> (number of PARAMS, indices of fx, fy, cx, cy); later params are distortion.
COLMAP_MODELS = {
  "SIMPLE_PINHOLE": (3, (0, 0, 1, 2)),
  "PINHOLE": (4, (0, 1, 2, 3)),
  "SIMPLE_RADIAL": (4, (0, 0, 1, 2)),
  "RADIAL": (5, (0, 0, 1, 2)),
  "OPENCV": (8, (0, 1, 2, 3)),
}


@dataclasses.dataclass(frozen=True)
class PoseSequence:
  """A sequence of F cameras read from a pose file.

  cameras: batched `Camera` (batch shape (F,)), float32, OpenCV convention.
  names: F strings: image names (nerfstudio file_path, COLMAP NAME) or timestamps (RealEstate10K).
  timestamps: (F,) int64 microseconds for RealEstate10K / ACID, else None.
  """

  cameras: Camera
  names: list[str]
  timestamps: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.names)


def read_realestate10k(path, width: int, height: int) -> PoseSequence:
  """Reads a RealEstate10K / ACID pose file; intrinsics there are normalised, so give the image size.

  Line 1 is the video URL; every further non-empty line is `timestamp_us fx fy cx cy 0 0` followed by
  the 12 values of a row-major 3x4 world->camera matrix (OpenCV axes), fx, cx divided by the width and
  fy, cy by the height.
  """
  path = Path(path)
  _check_image_size(width, height, f"reading {path}")
  lines = _read_text(path).splitlines()
  if not any(line.strip() for line in lines):
    raise InputFileError(f"{path}: empty file; expected a RealEstate10K pose file (URL line, then cameras)")
  if len(lines[0].split()) == REALESTATE10K_FIELDS:
    logger.warning("%s:1 looks like a camera line but line 1 of a RealEstate10K file is the video URL; "
                   "it is skipped", path)
  names, rows = [], []
  for line_number, line in enumerate(lines[1:], start=2):
    tokens = line.split()
    if not tokens:
      continue
    if len(tokens) != REALESTATE10K_FIELDS:
      raise InputFileError(f"{path}:{line_number}: expected {REALESTATE10K_FIELDS} fields (timestamp fx fy "
                           f"cx cy 0 0 and 12 values of a 3x4 world->camera matrix), got {len(tokens)}")
    try:
      int(tokens[0])
    except ValueError:
      raise InputFileError(f"{path}:{line_number}: timestamp {tokens[0]!r} is not an integer") from None
    values = _parse_floats(tokens[1:], f"{path}:{line_number}")
    _check_rotation(values[6:].reshape(3, 4)[:, :3], f"{path}:{line_number}")
    names.append(tokens[0])
    rows.append(values)
  if not rows:
    raise InputFileError(f"{path}: no camera lines after the URL line")
  values = np.stack(rows)  # (F, 18)
  fx, fy, cx, cy = values[:, 0] * width, values[:, 1] * height, values[:, 2] * width, values[:, 3] * height
  cameras = _make_cameras(values[:, 6:].reshape(-1, 3, 4), _intrinsics(fx, fy, cx, cy), width, height)
  return PoseSequence(cameras, names, np.array([int(name) for name in names], np.int64))


def write_realestate10k(path, poses: PoseSequence, url: str = "") -> None:
  """Writes `poses` as a RealEstate10K pose file, atomically (temp file in the same directory + rename).

  Timestamps are `poses.timestamps`, or the frame indices 0..F-1 when None. Intrinsics are written
  normalised by the cameras' size; a nonzero skew K[0, 1] cannot be stored and is dropped (warning).
  """
  path = Path(path)
  cameras = poses.cameras
  if len(cameras.batch_shape) != 1:
    raise WonderlandError(f"write_realestate10k: expected a 1-D batch of cameras, got {cameras.batch_shape}")
  if "\n" in url or "\r" in url:
    raise WonderlandError(f"write_realestate10k: the URL for {path} must be a single line")
  K = np.asarray(cameras.K, np.float64)
  viewmat = np.asarray(cameras.viewmat, np.float64)
  timestamps = np.arange(len(cameras)) if poses.timestamps is None else np.asarray(poses.timestamps)
  if timestamps.shape != (len(cameras),):
    raise WonderlandError(
      f"write_realestate10k: {len(cameras)} cameras but timestamps of shape {timestamps.shape}")
  if np.any(np.abs(K[:, 0, 1]) > 1e-6 * np.abs(K[:, 0, 0])):
    logger.warning("%s: RealEstate10K cannot store skew; K[0, 1] is dropped", path)
  width, height = cameras.width, cameras.height
  lines = [url]
  for timestamp, k, view in zip(timestamps, K, viewmat):
    values = [k[0, 0] / width, k[1, 1] / height, k[0, 2] / width, k[1, 2] / height, 0.0, 0.0]
    values += view[:3, :4].reshape(-1).tolist()
    lines.append(" ".join([str(int(timestamp))] + [f"{value:.9g}" for value in values]))
  with atomic_path(path) as temporary:
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_nerfstudio(path) -> PoseSequence:
  """Reads a nerfstudio `transforms.json` (as shipped with DL3DV), or a directory containing one.

  Intrinsics `fl_x, fl_y, cx, cy, w, h` (pixels) come from each frame, falling back to the top level; so does
  `camera_model`, which must be a perspective one (`NERFSTUDIO_PERSPECTIVE`; absent means OPENCV): a fisheye
  or equirectangular file is refused by name, not read as pinhole.
  `frames[i].transform_matrix` is camera->world in OpenGL/Blender axes (x right, y up, z back) and is
  converted to OpenCV by negating the camera's y and z axes. Frames are sorted by `file_path`, which
  becomes the name. All frames must share one image size.
  """
  path = Path(path)
  if path.is_dir():
    path = path / "transforms.json"
  text = _read_text(path)
  try:
    meta = json.loads(text)
  except json.JSONDecodeError as err:
    raise InputFileError(f"{path}:{err.lineno}: invalid JSON: {err.msg}") from None
  if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
    raise InputFileError(f"{path}: expected a JSON object with a non-empty list 'frames'")
  entries, distortion_keys = [], set()
  for index, frame in enumerate(meta["frames"]):
    where = f"frames[{index}]"
    if not isinstance(frame, dict):
      raise InputFileError(f"{path}: '{where}' must be an object, got {type(frame).__name__}")
    model = frame.get("camera_model", meta.get("camera_model", "OPENCV"))
    if model not in NERFSTUDIO_PERSPECTIVE:
      source = f"{where}.camera_model" if "camera_model" in frame else "camera_model"
      raise InputFileError(f"{path}: '{source}' is {model!r}; only perspective cameras are supported "
                           f"({', '.join(NERFSTUDIO_PERSPECTIVE)})")
    intrinsics = {}
    for key in NERFSTUDIO_INTRINSICS:
      if key not in frame and key not in meta:
        raise InputFileError(f"{path}: missing key '{where}.{key}' (and no top-level '{key}')")
      source = f"{where}.{key}" if key in frame else key
      intrinsics[key] = _json_number(frame[key] if key in frame else meta[key], path, source)
    distortion_keys.update(key for key in NERFSTUDIO_DISTORTION if frame.get(key, meta.get(key)))
    if "file_path" not in frame:
      raise InputFileError(f"{path}: missing key '{where}.file_path'")
    if "transform_matrix" not in frame:
      raise InputFileError(f"{path}: missing key '{where}.transform_matrix'")
    try:
      c2w = np.asarray(frame["transform_matrix"], np.float64)
    except (TypeError, ValueError):
      c2w = None
    if c2w is None or c2w.shape not in ((4, 4), (3, 4)) or not np.all(np.isfinite(c2w)):
      raise InputFileError(f"{path}: '{where}.transform_matrix' must be a 4x4 matrix of finite numbers")
    _check_rotation(c2w[:3, :3], f"{path}: '{where}.transform_matrix'")
    entries.append((str(frame["file_path"]), where, intrinsics, c2w[:3, :4]))
  if distortion_keys:
    logger.warning("%s: ignoring nonzero lens distortion %s (cameras are treated as pinhole)",
                   path, sorted(distortion_keys))
  entries.sort(key=lambda entry: entry[0])
  width, height = _shared_image_size(
    [(e[1], e[2]["w"], e[2]["h"]) for e in entries], path)
  c2w = np.stack([e[3] for e in entries])  # (F, 3, 4) OpenGL axes
  c2w[:, :, 1:3] *= -1  # camera y up -> down, z back -> forward (OpenCV)
  fx, fy, cx, cy = (np.array([e[2][key] for e in entries]) for key in ("fl_x", "fl_y", "cx", "cy"))
  cameras = _make_cameras(rigid_inverse(c2w), _intrinsics(fx, fy, cx, cy), width, height)
  return PoseSequence(cameras, [e[0] for e in entries])


def read_colmap_text(model_dir) -> PoseSequence:
  """Reads a COLMAP text model: `cameras.txt` and `images.txt` in `model_dir` (or its `sparse/0/`).

  Supported camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV (distortion ignored).
  Image poses (QW QX QY QZ TX TY TZ: Hamilton quaternion and translation) are world->camera, OpenCV
  axes, pixel centres at +0.5 like ours. Images are sorted by NAME; all must share one image size.
  """
  model_dir = Path(model_dir)
  if not model_dir.is_dir():
    raise InputFileError(f"{model_dir}: no such directory (expected a COLMAP text model)")
  found = _colmap_model_dir(model_dir)
  if found is None:
    hint = (" (it has a binary model: read it with read_colmap_binary)"
            if _colmap_model_dir(model_dir, "bin") is not None else "")
    raise InputFileError(f"{model_dir}: no cameras.txt and images.txt here or in sparse/0/{hint}")
  colmap_cameras = _read_colmap_cameras(found / "cameras.txt")
  return _colmap_sequence(colmap_cameras, _read_colmap_images(found / "images.txt", colmap_cameras),
                          found / "images.txt")


def read_colmap_binary(model_dir) -> PoseSequence:
  """Reads a COLMAP binary model (what `colmap mapper` writes): `cameras.bin` and `images.bin` in `model_dir`
  (or its `sparse/0/`). Same conventions and camera models as `read_colmap_text`; only registered images are
  in the model, so a partial reconstruction gives fewer cameras than frames (match them by `names`)."""
  model_dir = Path(model_dir)
  found = _colmap_model_dir(model_dir, "bin") if model_dir.is_dir() else None
  if found is None:
    raise InputFileError(f"{model_dir}: no cameras.bin and images.bin here or in sparse/0/")
  colmap_cameras = _read_colmap_cameras_bin(found / "cameras.bin")
  return _colmap_sequence(colmap_cameras, _read_colmap_images_bin(found / "images.bin", colmap_cameras),
                          found / "images.bin")


def read_colmap(model_dir) -> PoseSequence:
  """A COLMAP model in `model_dir` (or its sparse/0/), text or binary (text preferred when both are there)."""
  model_dir = Path(model_dir)
  if model_dir.is_dir() and _colmap_model_dir(model_dir) is None and _colmap_model_dir(model_dir, "bin"):
    return read_colmap_binary(model_dir)
  return read_colmap_text(model_dir)


def _colmap_sequence(colmap_cameras: dict, images: list[tuple[str, int, np.ndarray]], path: Path) -> PoseSequence:
  """Cameras of the images sorted by name; `path` is named when their image sizes differ."""
  images = sorted(images, key=lambda image: image[0])
  sizes = [(f"image {name!r} (camera {camera_id})", *colmap_cameras[camera_id][:2])
           for name, camera_id, _ in images]
  width, height = _shared_image_size(sizes, path)
  intrinsics = np.array([colmap_cameras[camera_id][2] for _, camera_id, _ in images])  # (F, 4)
  viewmat = np.stack([image[2] for image in images])
  cameras = _make_cameras(viewmat, _intrinsics(*intrinsics.T), width, height)
  return PoseSequence(cameras, [image[0] for image in images])


def read_pose_file(path, width: int | None = None, height: int | None = None) -> PoseSequence:
  """Reads any supported pose file (`_read_pose_file`) and checks its cameras: finite, positive focal lengths
  (`InputFileError` naming the file otherwise)."""
  poses = _read_pose_file(path, width, height)
  try:
    check_cameras(poses.cameras, str(path))
  except WonderlandError as error:
    raise InputFileError(str(error)) from None
  return poses


def _read_pose_file(path, width: int | None = None, height: int | None = None) -> PoseSequence:
  """Reads any supported pose file, choosing the reader from the path.

  * a directory with transforms.json, or a *.json file -> `read_nerfstudio`;
  * a directory with cameras.txt and images.txt (directly or in sparse/0/), or one of those two files
    -> `read_colmap_text`; with cameras.bin and images.bin instead -> `read_colmap_binary`;
  * any other file (typically *.txt) -> `read_realestate10k`, which needs width and height.

  For nerfstudio and COLMAP, which store pixel intrinsics, a given width/height resizes the cameras
  (intrinsics scaled with `Camera.resized`).
  """
  path = Path(path)
  if (width is None) != (height is None):
    raise WonderlandError(f"reading {path}: give both width and height, or neither")
  if not path.exists():
    raise InputFileError(f"{path}: no such file or directory")
  if path.is_dir():
    if (path / "transforms.json").is_file():
      poses = read_nerfstudio(path)
    elif _colmap_model_dir(path) is not None or _colmap_model_dir(path, "bin") is not None:
      poses = read_colmap(path)
    else:
      raise InputFileError(f"{path}: directory has neither transforms.json nor a COLMAP model "
                           "(cameras.txt + images.txt or cameras.bin + images.bin, or in sparse/0/)")
  elif path.suffix.lower() == ".json":
    poses = read_nerfstudio(path)
  elif path.name in ("cameras.txt", "images.txt") and _colmap_model_dir(path.parent) is not None:
    poses = read_colmap_text(path.parent)
  elif width is None:
    raise WonderlandError(f"reading {path}: read as a RealEstate10K pose file, whose intrinsics are "
                          "normalised; give width and height")
  else:
    return read_realestate10k(path, width, height)
  if width is not None:
    _check_image_size(width, height, f"reading {path}")
    poses = dataclasses.replace(poses, cameras=poses.cameras.resized(width, height))
  return poses


def _read_colmap_cameras(path: Path) -> dict[int, tuple[int, int, tuple[float, float, float, float]]]:
  """cameras.txt -> {camera_id: (width, height, (fx, fy, cx, cy))}."""
  colmap_cameras, distorted = {}, False
  for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
    tokens = line.split()
    if not tokens or tokens[0].startswith("#"):
      continue
    where = f"{path}:{line_number}"
    if len(tokens) < 4:
      raise InputFileError(f"{where}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., got {len(tokens)} "
                           "fields")
    model = tokens[1]
    if model not in COLMAP_MODELS:
      raise InputFileError(f"{where}: unsupported camera model {model!r}; supported: "
                           f"{', '.join(COLMAP_MODELS)}")
    num_params = COLMAP_MODELS[model][0]
    if len(tokens) != 4 + num_params:
      raise InputFileError(f"{where}: {model} needs {num_params} parameters, got {len(tokens) - 4}")
    camera_id, width, height = (_parse_int(token, where) for token in tokens[:1] + tokens[2:4])
    intrinsics, lens_distortion = _pinhole(model, _parse_floats(tokens[4:], where))
    distorted |= lens_distortion
    colmap_cameras[camera_id] = (width, height, intrinsics)
  return _checked_cameras(colmap_cameras, distorted, path)


def _pinhole(model: str, params: np.ndarray) -> tuple[tuple[float, float, float, float], bool]:
  """A supported COLMAP model's PARAMS -> ((fx, fy, cx, cy), whether any distortion coefficient is nonzero)."""
  fx, fy, cx, cy = COLMAP_MODELS[model][1]
  return (params[fx], params[fy], params[cx], params[cy]), bool(np.any(params[max(fx, fy, cx, cy) + 1:] != 0))


def _checked_cameras(colmap_cameras: dict, distorted: bool, path: Path) -> dict:
  """The cameras read from `path`: an error when there are none, one warning when any lens is distorted."""
  if not colmap_cameras:
    raise InputFileError(f"{path}: no cameras")
  if distorted:
    logger.warning("%s: ignoring nonzero lens distortion (cameras are treated as pinhole)", path)
  return colmap_cameras


def _read_colmap_images(path: Path, colmap_cameras: dict) -> list[tuple[str, int, np.ndarray]]:
  """images.txt -> [(NAME, CAMERA_ID, (3, 4) world->camera)]; each image line is followed by a points line."""
  lines = [(number, line) for number, line in enumerate(_read_text(path).splitlines(), start=1)
           if not line.lstrip().startswith("#")]
  images, index = [], 0
  while index < len(lines):
    line_number, line = lines[index]
    if not line.strip():
      index += 1
      continue
    where = f"{path}:{line_number}"
    tokens = line.split(maxsplit=9)
    if len(tokens) != 10:
      raise InputFileError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got "
                           f"{len(tokens)} fields")
    pose = _parse_floats(tokens[1:8], where)
    camera_id = _parse_int(tokens[8], where)
    if camera_id not in colmap_cameras:
      raise InputFileError(f"{where}: CAMERA_ID {camera_id} is not in cameras.txt")
    quaternion_norm = np.linalg.norm(pose[:4])
    if quaternion_norm < 1e-8:
      raise InputFileError(f"{where}: zero quaternion")
    viewmat = np.concatenate([_quaternion_wxyz_to_rotation(pose[:4] / quaternion_norm), pose[4:, None]], 1)
    images.append((tokens[9].strip(), camera_id, viewmat))
    index += 2  # skip the POINTS2D line (possibly empty)
  if not images:
    raise InputFileError(f"{path}: no images")
  return images


def _quaternion_wxyz_to_rotation(quaternion: np.ndarray) -> np.ndarray:
  """Unit Hamilton quaternion (w, x, y, z) -> (3, 3) rotation matrix."""
  w, x, y, z = quaternion
  return np.array([
    [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
    [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
    [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def _colmap_model_dir(directory: Path, extension: str = "txt") -> Path | None:
  for candidate in (directory, directory / "sparse" / "0"):
    if (candidate / f"cameras.{extension}").is_file() and (candidate / f"images.{extension}").is_file():
      return candidate
  return None


# COLMAP's binary model ids (src/colmap/sensor/models.h) -> (name, number of params); only the names in
# COLMAP_MODELS are read, the others are refused by name.
COLMAP_MODEL_IDS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
                    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
                    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}


class _BinaryReader:
  """Little-endian fields of a COLMAP .bin file; a truncated file is an InputFileError naming it."""

  def __init__(self, path: Path):
    self.path = path
    try:
      self.data = path.read_bytes()
    except OSError as err:
      raise InputFileError(f"{path}: cannot read: {err.strerror}") from None
    self.offset = 0

  def read(self, format: str) -> tuple:
    size = struct.calcsize("<" + format)
    if self.offset + size > len(self.data):
      raise InputFileError(f"{self.path}: truncated at byte {self.offset} (not a COLMAP binary model?)")
    values = struct.unpack_from("<" + format, self.data, self.offset)
    self.offset += size
    return values

  def string(self) -> str:
    end = self.data.find(b"\0", self.offset)
    if end < 0:
      raise InputFileError(f"{self.path}: truncated image name at byte {self.offset}")
    name = self.data[self.offset:end].decode("utf-8", errors="replace")
    self.offset = end + 1
    return name


def _read_colmap_cameras_bin(path: Path) -> dict[int, tuple[int, int, tuple[float, float, float, float]]]:
  """cameras.bin -> {camera_id: (width, height, (fx, fy, cx, cy))}."""
  reader, colmap_cameras, distorted = _BinaryReader(path), {}, False
  (count,) = reader.read("Q")
  for _ in range(count):
    camera_id, model_id, width, height = reader.read("iiQQ")
    if model_id not in COLMAP_MODEL_IDS:
      raise InputFileError(f"{path}: camera {camera_id} has unknown model id {model_id}")
    model, num_params = COLMAP_MODEL_IDS[model_id]
    params = np.array(reader.read(f"{num_params}d"))
    if model not in COLMAP_MODELS:
      raise InputFileError(f"{path}: camera {camera_id}: unsupported camera model {model!r}; supported: "
                           f"{', '.join(COLMAP_MODELS)}")
    intrinsics, lens_distortion = _pinhole(model, params)
    distorted |= lens_distortion
    colmap_cameras[camera_id] = (width, height, intrinsics)
  return _checked_cameras(colmap_cameras, distorted, path)


def _read_colmap_images_bin(path: Path, colmap_cameras: dict) -> list[tuple[str, int, np.ndarray]]:
  """images.bin -> [(name, camera_id, (3, 4) world->camera)] (the 2D points are skipped)."""
  reader, images = _BinaryReader(path), []
  (count,) = reader.read("Q")
  for _ in range(count):
    image_id, *pose, camera_id = reader.read("i7di")
    name = reader.string()
    (num_points,) = reader.read("Q")
    reader.read(f"{24 * num_points}x")  # (x, y, point3D_id) per point: float64, float64, int64
    if camera_id not in colmap_cameras:
      raise InputFileError(f"{path}: image {image_id} ({name!r}) has CAMERA_ID {camera_id}, not in cameras.bin")
    pose = np.array(pose)
    quaternion_norm = np.linalg.norm(pose[:4])
    if not np.all(np.isfinite(pose)) or quaternion_norm < 1e-8:
      raise InputFileError(f"{path}: image {image_id} ({name!r}) has a zero or non-finite pose")
    viewmat = np.concatenate([_quaternion_wxyz_to_rotation(pose[:4] / quaternion_norm), pose[4:, None]], 1)
    images.append((name, camera_id, viewmat))
  if not images:
    raise InputFileError(f"{path}: no registered images")
  return images


def _make_cameras(viewmat: np.ndarray, K: np.ndarray, width: int, height: int) -> Camera:
  """float32 Camera from (F, 3, 4) world->camera and (F, 3, 3) pixel intrinsics (float64 in)."""
  return Camera.from_viewmat(viewmat.astype(np.float32), K.astype(np.float32), int(width), int(height))


def _intrinsics(fx, fy, cx, cy) -> np.ndarray:
  """(F,) each -> (F, 3, 3) float64 pixel intrinsics."""
  K = np.zeros((len(fx), 3, 3))
  K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
  return K


def _shared_image_size(sizes: list[tuple[str, float, float]], path: Path) -> tuple[int, int]:
  """[(what, width, height)] -> the common (width, height); error naming two that differ."""
  first_what, width, height = sizes[0]
  for what, other_width, other_height in sizes[1:]:
    if (other_width, other_height) != (width, height):
      raise InputFileError(f"{path}: all cameras must share one image size, but {first_what} is "
                           f"{width:g}x{height:g} and {what} is {other_width:g}x{other_height:g}")
  _check_image_size(width, height, f"{path}: {first_what}")
  return int(width), int(height)


def _check_image_size(width, height, context: str) -> None:
  try:
    valid = all(int(v) == v and v > 0 for v in (width, height))
  except (TypeError, ValueError):
    valid = False
  if not valid:
    raise WonderlandError(f"{context}: image width and height must be positive integers, got "
                          f"{width}x{height}")


def _check_rotation(rotation: np.ndarray, where: str) -> None:
  """Rejects a pose whose rotation block is not orthonormal (a wrong or corrupt file)."""
  if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-2):
    raise InputFileError(f"{where}: the pose's 3x3 rotation block is not orthonormal")


def _read_text(path: Path) -> str:
  try:
    return path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise InputFileError(f"{path}: no such file") from None
  except IsADirectoryError:
    raise InputFileError(f"{path}: is a directory, expected a file") from None
  except UnicodeDecodeError:
    raise InputFileError(f"{path}: not a UTF-8 text file") from None
  except OSError as err:
    raise InputFileError(f"{path}: cannot read: {err.strerror}") from None


def _parse_floats(tokens: list[str], where: str) -> np.ndarray:
  values = []
  for token in tokens:
    try:
      value = float(token)
    except ValueError:
      raise InputFileError(f"{where}: non-numeric value {token!r}") from None
    if not np.isfinite(value):
      raise InputFileError(f"{where}: non-finite value {token!r}")
    values.append(value)
  return np.array(values)


def _parse_int(token: str, where: str) -> int:
  try:
    return int(token)
  except ValueError:
    raise InputFileError(f"{where}: {token!r} is not an integer") from None


def _json_number(value, path: Path, key: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
    raise InputFileError(f"{path}: '{key}' must be a finite number, got {value!r}")
  return float(value)

