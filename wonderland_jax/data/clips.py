"""Training clips for the LaLRM: F seen frames sampled with a stride, plus V supervision views.

Following the paper (sec. 3.3 and appendix D): a clip covers the source frames start, start + s, ...,
start + (F - 1) s for a stride s drawn per clip from the dataset's range; these are the *seen* views (the ones
the VAE encodes). The V supervision views are `num_target_seen` frames drawn from the clip and
`num_target_unseen` frames that are not in it, drawn from the skipped frames inside the clip's range and from
up to `outside_margin` x the clip's span before its first and after its last frame.

Poses: everything is re-based on the clip's first frame (its camera becomes the world frame: viewmats[0] is
the identity) and scaled uniformly so that the farthest clip camera is `scale_target` from the first one
('max_distance'; or 'path_length'; 'extent_floor': the same, but a clip whose cameras move less than
`scale_floor` (dataset units) is scaled by scale_target / scale_floor instead, so a near pure rotation is not
blown up; 'none' keeps the dataset's units): `camera.normalize_poses`, the one normalisation that training steps
and inference apply too.
The scale comes from the seen frames only (the model's input), and the same factor applies to the targets.
The factor itself is returned as `pose_scale` (new translation = pose_scale * old).

Images: resized (Pillow bicubic, antialiased when shrinking) so they cover (height, width), then centre
cropped; the intrinsics follow exactly (pixel centres at +0.5: a resize by s maps u -> s u, a crop by o maps
u -> u - o). Everything is numpy on the host and deterministic given the `np.random.Generator`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image

from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR, SCALE_MODES, normalize_poses
from wonderland_jax.data.scenes import DataErrors, Scene, SceneRef
from wonderland_jax.errors import InputFileError, WonderlandError

logger = logging.getLogger(__name__)

# Inclusive stride ranges per dataset. The paper's numbers are lost from our copy of the text; these follow
# its description: RealEstate10K clips of 49 frames cover ~150-250 source frames, ACID videos are short
# (< 100 frames with poses), DL3DV keyframes are far apart.
DEFAULT_STRIDES = {
  "realestate10k": (3, 5),
  "acid": (1, 2),
  "dl3dv": (1, 2),
  "colmap": (1, 2),
  "synthetic": (1, 3),
}
SCENE_CACHE_SIZE = 256  # parsed scenes kept by a ClipSource


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How clips are cut; see the module docstring.

  num_frames: F, the seen frames (1 + 4k for the CogVideoX VAE: 49 full size, 9 tiny).
  height, width: output image size in pixels.
  stride: inclusive (min, max) stride, or None for the dataset's `DEFAULT_STRIDES`. Scenes too short for
    the largest stride use the largest that fits.
  num_target_seen, num_target_unseen: the V = seen + unseen supervision views.
  outside_margin: unseen views may lie up to this fraction of the clip's span outside it (0: only inside).
  scale_mode, scale_target, scale_floor: pose normalisation (`camera.poses`: SCALE_MODES; the floor, in the
    dataset's units, is read by 'extent_floor' only).
  """

  num_frames: int = 49
  height: int = 480
  width: int = 720
  stride: tuple[int, int] | None = None
  num_target_seen: int = 24
  num_target_unseen: int = 24
  outside_margin: float = 0.5
  scale_mode: str = "max_distance"
  scale_target: float = 1.0
  scale_floor: float = DEFAULT_SCALE_FLOOR

  @property
  def num_targets(self) -> int:
    return self.num_target_seen + self.num_target_unseen

  def validate(self) -> ClipSpec:
    """Raises WonderlandError naming the bad field; returns self."""
    positive = {"num_frames": self.num_frames, "height": self.height, "width": self.width}
    for name, value in positive.items():
      if int(value) != value or value < 1:
        raise WonderlandError(f"clip spec: {name} must be a positive integer, got {value!r}")
    if not 0 <= self.num_target_seen <= self.num_frames:
      raise WonderlandError(f"clip spec: num_target_seen must be in [0, num_frames={self.num_frames}], got "
                            f"{self.num_target_seen}")
    if self.num_target_unseen < 0:
      raise WonderlandError(f"clip spec: num_target_unseen must be >= 0, got {self.num_target_unseen}")
    if self.stride is not None:
      low, high = _stride_range(self.stride)
      if low < 1 or high < low:
        raise WonderlandError(f"clip spec: stride must be (min, max) with 1 <= min <= max, got {self.stride}")
    if self.outside_margin < 0:
      raise WonderlandError(f"clip spec: outside_margin must be >= 0, got {self.outside_margin}")
    if self.scale_mode not in SCALE_MODES:
      raise WonderlandError(f"clip spec: scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
    if not self.scale_target > 0:
      raise WonderlandError(f"clip spec: scale_target must be positive, got {self.scale_target}")
    if not (np.isfinite(self.scale_floor) and self.scale_floor > 0):
      raise WonderlandError(f"clip spec: scale_floor must be positive and finite, got {self.scale_floor}")
    return self


@dataclasses.dataclass(frozen=True)
class ClipIndices:
  """Source-frame indices of one clip.

  frame_indices: (F,) the seen frames, increasing by `stride`.
  target_indices: (V,) the supervision views: the seen ones first (in clip order), then the unseen ones.
  target_is_seen: (V,) bool; False for frames outside the clip. When a scene has no frame outside the clip
    (stride 1 over the whole video), the 'unseen' targets fall back to clip frames and are marked seen.
  target_slots: (V,) where each target is in the list `load_order` (frames first, then unseen targets).
  stride: the clip's stride.
  """

  frame_indices: np.ndarray
  target_indices: np.ndarray
  target_is_seen: np.ndarray
  target_slots: np.ndarray
  stride: int

  @property
  def load_order(self) -> np.ndarray:
    """(F + num_target_unseen,) frames to load: the clip, then the unseen targets (fixed length)."""
    unseen = self.target_slots >= len(self.frame_indices)
    return np.concatenate([self.frame_indices, self.target_indices[unseen]])


def sample_indices(num_source_frames: int, spec: ClipSpec, rng: np.random.Generator,
                   stride_range: tuple[int, int], *, where: str = "scene") -> ClipIndices:
  """Draws a stride, a start frame and the targets for a source of `num_source_frames` frames.

  Raises InputFileError (naming `where`) when the source has fewer frames than the clip.
  """
  num_frames = spec.num_frames
  if num_source_frames < num_frames:
    raise InputFileError(f"{where}: {num_source_frames} frames, too few for a clip of {num_frames}")
  low, high = _stride_range(stride_range)
  longest = (num_source_frames - 1) // (num_frames - 1) if num_frames > 1 else high
  high = max(1, min(high, longest))
  stride = int(rng.integers(min(low, high), high + 1))
  span = stride * (num_frames - 1)
  start = int(rng.integers(0, num_source_frames - span))
  frames = start + stride * np.arange(num_frames)

  seen_positions = np.sort(rng.choice(num_frames, spec.num_target_seen, replace=False))
  margin = int(round(spec.outside_margin * span))
  window = np.arange(max(0, start - margin), min(num_source_frames, start + span + margin + 1))
  pool = np.setdiff1d(window, frames)
  count = spec.num_target_unseen
  if pool.size:
    unseen = np.sort(rng.choice(pool, count, replace=pool.size < count))
    unseen_is_seen = np.zeros(count, bool)
  else:
    unseen = np.sort(rng.choice(frames, count, replace=True))
    unseen_is_seen = np.ones(count, bool)
  return ClipIndices(
    frame_indices=frames.astype(np.int64),
    target_indices=np.concatenate([frames[seen_positions], unseen]).astype(np.int64),
    target_is_seen=np.concatenate([np.ones(spec.num_target_seen, bool), unseen_is_seen]),
    target_slots=np.concatenate([seen_positions, num_frames + np.arange(count)]).astype(np.int64),
    stride=stride)


def crop_transform(source_size: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int],
                                                                                  tuple[int, int]]:
  """The resize-to-cover then centre-crop from (H0, W0) to (H, W).

  Returns (A, resized, offset): A (3, 3) maps source pixel coordinates to output ones (K' = A @ K), resized =
  (H1, W1) the intermediate size, offset = (top, left) of the crop in it.
  """
  (source_height, source_width), (height, width) = source_size, size
  scale = max(height / source_height, width / source_width)
  resized_height = max(height, int(round(source_height * scale)))
  resized_width = max(width, int(round(source_width * scale)))
  top, left = (resized_height - height) // 2, (resized_width - width) // 2
  transform = np.array([[resized_width / source_width, 0.0, -left],
                        [0.0, resized_height / source_height, -top],
                        [0.0, 0.0, 1.0]])
  return transform, (resized_height, resized_width), (top, left)


def resize_and_crop(images: np.ndarray, intrinsics: np.ndarray, height: int,
                    width: int) -> tuple[np.ndarray, np.ndarray]:
  """images (n, H0, W0, 3) float in [0, 1], intrinsics (n, 3, 3) pixels -> (n, H, W, 3) float32 and the
  matching (n, 3, 3) float64 intrinsics (see `crop_transform`)."""
  images = np.asarray(images, np.float32)
  transform, (resized_height, resized_width), (top, left) = crop_transform(images.shape[1:3], (height, width))
  if (resized_height, resized_width) != images.shape[1:3]:
    images = np.stack([
      np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., channel])).resize(
        (resized_width, resized_height), Image.Resampling.BICUBIC)) for channel in range(3)], -1)
      for image in images])
    images = np.clip(images, 0.0, 1.0)
  images = images[:, top:top + height, left:left + width]
  return np.ascontiguousarray(images, np.float32), transform @ np.asarray(intrinsics, np.float64)


def make_clip(scene: Scene, indices: ClipIndices, spec: ClipSpec) -> dict[str, np.ndarray]:
  """Loads and assembles the clip `indices` of `scene` (keys in `wonderland_jax.data`)."""
  load = indices.load_order
  images, intrinsics = resize_and_crop(scene.load_frames(load), scene.intrinsics[load], spec.height, spec.width)
  viewmats, scale = normalize_poses(scene.viewmats[load], spec.num_frames, spec.scale_mode, spec.scale_target,
                                    spec.scale_floor)
  num_frames, slots = spec.num_frames, indices.target_slots
  return {
    "frames": images[:num_frames],
    "viewmats": viewmats[:num_frames].astype(np.float32),
    "intrinsics": intrinsics[:num_frames].astype(np.float32),
    "target_images": images[slots],
    "target_viewmats": viewmats[slots].astype(np.float32),
    "target_intrinsics": intrinsics[slots].astype(np.float32),
    "target_is_seen": indices.target_is_seen,
    "frame_indices": indices.frame_indices.astype(np.int32),
    "target_indices": indices.target_indices.astype(np.int32),
    "pose_scale": np.float32(scale),
  }


def clip_rng(seed: int, index: int, epoch: int = 0) -> np.random.Generator:
  """The Generator for the clip of scene `index` in `epoch`: the same on every host and in every run."""
  return np.random.default_rng([int(seed), int(index), int(epoch)])


def sample_clip(scene: Scene, spec: ClipSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A random clip of `scene` (stride range: `spec.stride` or the scene's dataset default)."""
  stride_range = spec.stride or DEFAULT_STRIDES.get(scene.dataset, (1, 1))
  indices = sample_indices(len(scene), spec, rng, stride_range, where=str(scene.source))
  return make_clip(scene, indices, spec)


class ClipSource:
  """Random access to clips of a list of scenes: clip(scene_index, rng), or [index] with rng from (seed, index).

  Bad scenes (unparsable poses, missing or unreadable frames, too short) are handled by `errors`: with
  on_error='raise' the InputFileError propagates; with 'skip' the clip is None (grain drops Nones) and counted.
  Every returned clip also has `scene_index` () int32.
  """

  def __init__(self, scenes: Sequence[SceneRef | Scene], spec: ClipSpec, *, seed: int = 0,
               on_error: str | DataErrors = "skip"):
    if not scenes:
      raise WonderlandError("ClipSource: no scenes")
    self.scenes = list(scenes)
    self.spec = spec.validate()
    self.seed = int(seed)
    self.errors = on_error if isinstance(on_error, DataErrors) else DataErrors(on_error)
    self._lock = threading.Lock()
    self._cache: dict[int, Scene] = {}
    self._bad: set[int] = set()

  def __len__(self) -> int:
    return len(self.scenes)

  def __getitem__(self, index: int) -> dict[str, np.ndarray] | None:
    return self.clip(index, clip_rng(self.seed, index))

  def scene(self, index: int) -> Scene:
    """The parsed scene `index` (cached); InputFileError if it cannot be read."""
    with self._lock:
      if index in self._cache:
        return self._cache[index]
    scene = self.scenes[index]
    scene = scene.load() if isinstance(scene, SceneRef) else scene
    with self._lock:
      if len(self._cache) >= SCENE_CACHE_SIZE:
        self._cache.pop(next(iter(self._cache)))
      self._cache[index] = scene
    return scene

  def clip(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    """A clip of scene `index` drawn with `rng`; None if the scene is bad and on_error='skip'."""
    index = int(index)
    try:
      clip = sample_clip(self.scene(index), self.spec, rng)
    except InputFileError as err:
      self.errors.handle(err)  # raises with on_error='raise'
      self._mark_bad(index)
      return None
    clip["scene_index"] = np.int32(index)
    return clip

  def _mark_bad(self, index: int) -> None:
    with self._lock:
      self._bad.add(index)
      all_bad = len(self._bad) == len(self.scenes)
    if all_bad:
      raise InputFileError(f"every one of the {len(self.scenes)} scenes failed to load; first error: "
                           f"{(self.errors.messages or ['(none)'])[0]}")


def _stride_range(stride) -> tuple[int, int]:
  if isinstance(stride, int):
    return stride, stride
  try:
    low, high = (int(v) for v in stride)
  except (TypeError, ValueError):
    raise WonderlandError(f"stride must be an int or a (min, max) pair, got {stride!r}") from None
  return low, high

