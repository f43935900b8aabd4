"""A procedural multi-view dataset: random Gaussian scenes filmed along smooth camera arcs.

Every scene index gives (deterministically, from (seed, index)) a scene of exactly `num_gaussians` Gaussians
(a checkered floor and a few coloured blobs in an OpenCV-style world: y points down, the floor is at
y = +0.6) over a flat background colour, and a "source video" of `num_source_frames` cameras on an arc
around it, always looking at the scene. Frames are rendered with our rasterizer on demand, directly at the
clip's size, so clips (`clips.sample_clip`: stride, unseen targets, re-basing, scale) carry exact
ground truth. Shapes are fixed per dataset (Gaussians, cameras per render), so the renderer compiles once.

`write_synthetic_dataset` writes such scenes in RealEstate10K layout (pose .txt + frames named by timestamp,
or an .mp4) to exercise the file readers on real formats.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from wonderland_jax.camera import Camera, PoseSequence, look_at, write_realestate10k
from wonderland_jax.data.clips import ClipSpec, clip_rng, sample_clip
from wonderland_jax.data.scenes import Scene
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_directory, write_png, write_video
from wonderland_jax.outputs import check_output_directory
from wonderland_jax.progress import progress
from wonderland_jax.splat import Gaussians, capacity_for, rasterize

logger = logging.getLogger(__name__)

FLOOR_HEIGHT = 0.6  # world y of the floor (y points down)
WORLD_UP = (0.0, -1.0, 0.0)
VIDEO_FPS = 30.0


def random_scene(rng: np.random.Generator, num_gaussians: int = 384,
                 background: tuple[float, float, float] | None = None) -> tuple[Gaussians, np.ndarray]:
  """A random scene of exactly `num_gaussians` (>= 16) Gaussians and its (3,) background colour (random, or
  `background` when given: a reconstruction model rendering over the same colour need not model it).

  A third of the Gaussians tile a 4 x 4 floor in a checker of two random colours; the rest form 2-5 shaded
  spherical blobs of random colour, radius 0.2-0.5, centred within 1 of the origin above the floor.
  """
  if num_gaussians < 16:
    raise WonderlandError(f"random_scene: num_gaussians must be >= 16, got {num_gaussians}")
  num_floor = num_gaussians // 3
  side = int(np.ceil(np.sqrt(num_floor)))
  cells = rng.permutation(side * side)[:num_floor]
  cell = 4.0 / side
  floor_x = -2.0 + (cells % side + 0.5 + rng.uniform(-0.2, 0.2, num_floor)) * cell
  floor_z = -2.0 + (cells // side + 0.5 + rng.uniform(-0.2, 0.2, num_floor)) * cell
  floor_colors = rng.uniform(0.1, 0.9, (2, 3))
  checker = ((cells % side) // max(1, side // 4) + (cells // side) // max(1, side // 4)) % 2
  means = [np.stack([floor_x, np.full(num_floor, FLOOR_HEIGHT), floor_z], -1)]
  scales = [np.tile([0.6 * cell, 0.01, 0.6 * cell], (num_floor, 1))]
  colors = [np.clip(floor_colors[checker] + rng.normal(0, 0.03, (num_floor, 3)), 0, 1)]

  num_blobs = int(rng.integers(2, 6))
  counts = np.diff(np.linspace(0, num_gaussians - num_floor, num_blobs + 1).astype(int))
  light = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])
  for count in counts:
    radius = rng.uniform(0.2, 0.5)
    center = np.array([rng.uniform(-1, 1), rng.uniform(-0.4, FLOOR_HEIGHT - radius), rng.uniform(-1, 1)])
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    shading = 0.55 + 0.45 * np.clip(directions @ light, 0, 1)
    means.append(center + radius * directions)
    scales.append(np.full((count, 3), 0.3 * radius))
    colors.append(np.clip(rng.uniform(0.05, 1.0, 3) * shading[:, None], 0, 1))
  means, scales, colors = (np.concatenate(parts).astype(np.float32) for parts in (means, scales, colors))
  gaussians = Gaussians(means=jnp.asarray(means), quats=jnp.tile(jnp.asarray([1.0, 0.0, 0.0, 0.0]), (num_gaussians, 1)),
                        scales=jnp.asarray(scales), opacities=jnp.full((num_gaussians,), 0.95, jnp.float32),
                        colors=jnp.asarray(colors))
  random_background = rng.uniform(0.05, 0.95, 3).astype(np.float32)  # drawn either way: same scenes
  return gaussians, random_background if background is None else np.asarray(background, np.float32)


def random_camera_path(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """(num_frames, 4, 4) float64 OpenCV camera->world poses on a smooth arc looking at the scene.

  The arc turns 60-150 degrees (either way) around the vertical axis at radius 2.5-3.5, 0.3-1.2 above the
  origin, with a gentle sinusoidal wobble of radius and height; the look-at point drifts near the origin.
  """
  t = np.linspace(0.0, 1.0, num_frames)
  start = rng.uniform(0, 2 * np.pi)
  turn = np.deg2rad(rng.uniform(60, 150)) * rng.choice([-1.0, 1.0])
  angles = start + turn * t
  radius = rng.uniform(2.5, 3.5) * (1 + 0.1 * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 6.3)))
  height = -rng.uniform(0.3, 1.2) + 0.15 * np.sin(2 * np.pi * t + rng.uniform(0, 6.3))
  eyes = np.stack([radius * np.sin(angles), height, -radius * np.cos(angles)], -1)
  targets = rng.uniform(-0.2, 0.2, 3) + t[:, None] * rng.uniform(-0.2, 0.2, 3) + [0.0, 0.1, 0.0]
  return look_at(eyes, targets, up=WORLD_UP)


# camera_paths='families': the motion families a path is drawn from, with their probabilities. Every family
# goes either way (left / right, in / out, up / down) with equal odds, so a clip's first frame does not tell
# where its camera goes; most include a sideways motion, which mirroring left-right reverses.
PATH_FAMILIES = {"orbit": 0.25, "truck": 0.1, "pan": 0.15, "dolly": 0.1, "rise": 0.1, "orbit+rise": 0.1,
                 "orbit+dolly": 0.1, "pan+dolly": 0.1}
CAMERA_PATHS = ("arc", "families")
MOTIONS = ("orbit", "truck", "pan", "dolly", "rise")  # what a family combines with '+'


def _check_camera_paths(camera_paths: str, where: str) -> str:
  if camera_paths not in CAMERA_PATHS:
    raise WonderlandError(f"{where}: camera_paths must be one of {CAMERA_PATHS}, got {camera_paths!r}")
  return camera_paths


def family_camera_path(rng: np.random.Generator, num_frames: int, family: str | None = None) -> np.ndarray:
  """(num_frames, 4, 4) float64 OpenCV camera->world poses of one motion family (`PATH_FAMILIES`, drawn by its
  probability unless given), starting at a random azimuth, radius 2.6-3.4 and height 0.4-1.0 above the origin,
  looking at a point near it. Progress is linear in the frame index; each family's extent is drawn per path:

    orbit   around the vertical axis through the look-at point, 35-80 degrees, left or right
    truck   sideways along the start camera's right axis, 0.9-1.6, the viewing direction kept
    pan     the camera turns in place, 20-35 degrees, left or right
    dolly   towards or away from the look-at point, by 25-40% of the distance
    rise    up or down by 0.5-0.9, still looking at the point
    a+b     both motions at once (each at 70-100% of its own extent)
  """
  if family is None:
    names, weights = list(PATH_FAMILIES), np.asarray(list(PATH_FAMILIES.values()))
    family = names[int(rng.choice(len(names), p=weights / weights.sum()))]
  parts = family.split("+")
  unknown = [part for part in parts if part not in MOTIONS]
  if unknown:
    raise WonderlandError(f"family_camera_path: unknown motion {unknown[0]!r} in {family!r}")
  extent = 1.0 if len(parts) == 1 else None
  t = np.linspace(0.0, 1.0, num_frames)[:, None]
  azimuth, radius, height = rng.uniform(0, 2 * np.pi), rng.uniform(2.6, 3.4), -rng.uniform(0.4, 1.0)
  target = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.1, 0.2), rng.uniform(-0.3, 0.3)])
  angles, radii, heights = np.full_like(t, azimuth), np.full_like(t, radius), np.full_like(t, height)
  shift, turn = np.zeros_like(t), np.zeros_like(t)
  for part in parts:
    sign = rng.choice([-1.0, 1.0])
    scale = extent if extent is not None else rng.uniform(0.7, 1.0)
    if part == "orbit":
      angles = angles + sign * scale * np.deg2rad(rng.uniform(35, 80)) * t
    elif part == "truck":
      shift = shift + sign * scale * rng.uniform(0.9, 1.6) * t
    elif part == "pan":
      turn = turn + sign * scale * np.deg2rad(rng.uniform(20, 35)) * t
    elif part == "dolly":
      radii = radii * (1 + sign * scale * rng.uniform(0.25, 0.4) * t)
    else:  # rise: up is -y
      heights = heights - sign * scale * rng.uniform(0.5, 0.9) * t
  eyes = np.concatenate([target[0] + radii * np.sin(angles), heights, target[2] - radii * np.cos(angles)], -1)
  forward = target - eyes
  right = np.cross(forward, WORLD_UP)
  right /= np.linalg.norm(right, axis=-1, keepdims=True)
  eyes = eyes + shift * right[:1]  # truck: along the first camera's right axis, looking the same way
  # pan: turn the viewing direction about the vertical axis by `turn`.
  cos, sin = np.cos(turn[:, 0]), np.sin(turn[:, 0])
  forward = np.stack([cos * forward[:, 0] - sin * forward[:, 2], forward[:, 1],
                      sin * forward[:, 0] + cos * forward[:, 2]], -1)
  return look_at(eyes, eyes + forward, up=WORLD_UP)


def pinhole_intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
  """(3, 3) intrinsics with horizontal field of view `fov_deg`, square pixels, centred principal point."""
  focal = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_deg))
  return np.array([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]])


@dataclasses.dataclass(frozen=True, eq=False)
class RenderedFrames:
  """A `FrameSource` that renders `gaussians` from camera i on request (`background` (3,) behind them)."""

  gaussians: Gaussians
  viewmats: np.ndarray  # (N, 4, 4) world->camera
  intrinsics: np.ndarray  # (N, 3, 3) pixels
  background: np.ndarray

  def __len__(self) -> int:
    return len(self.viewmats)

  def read(self, indices, height: int, width: int) -> np.ndarray:
    indices = np.asarray(indices)
    cameras = Camera.from_viewmat(self.viewmats[indices].astype(np.float32),
                                  self.intrinsics[indices].astype(np.float32), width, height)
    # A static bound on the Gaussian-tile pairs: every Gaussian in every tile. One compile per shape.
    num_tiles = -(-width // 16) * -(-height // 16)
    out = rasterize(self.gaussians, cameras, background=jnp.asarray(self.background),
                    capacity=capacity_for(self.gaussians.num * num_tiles))
    return np.clip(np.asarray(out.image, np.float32), 0.0, 1.0)


def synthetic_scene(seed: int, index: int, *, height: int, width: int, num_source_frames: int = 40,
                    num_gaussians: int = 384, fov_deg: float = 60.0, background=None,
                    camera_paths: str = "arc") -> Scene:
  """Scene `index` of the synthetic dataset `seed`, rendered at width x height (dataset 'synthetic').
  camera_paths: 'arc' (`random_camera_path`) or 'families' (`family_camera_path`)."""
  _check_camera_paths(camera_paths, "synthetic")
  rng = np.random.default_rng([int(seed), int(index), 1 << 20])  # distinct from clip_rng's streams
  gaussians, background = random_scene(rng, num_gaussians, background)
  path = random_camera_path if camera_paths == "arc" else family_camera_path
  viewmats = np.linalg.inv(path(rng, num_source_frames))
  intrinsics = np.broadcast_to(pinhole_intrinsics(width, height, fov_deg), (num_source_frames, 3, 3)).copy()
  frames = RenderedFrames(gaussians, viewmats, intrinsics, background)
  return Scene(synthetic_scene_name(seed, index), f"synthetic dataset (seed {seed}) scene {index}", frames, viewmats,
               intrinsics, int(width), int(height), "synthetic").validate()


def synthetic_scene_name(seed: int, index: int) -> str:
  """The name (scene id) of scene `index` of the synthetic dataset `seed`: 'synthetic-<seed>-<index>'."""
  return f"synthetic-{int(seed)}-{int(index)}"


class SyntheticDataset:
  """`num_scenes` synthetic scenes; clip(index, rng) / [index] give clips in the `wonderland_jax.data` format.

  Images are rendered at (spec.height, spec.width), so no resizing happens. [index] uses
  `clip_rng(seed, index)`: the same clip for the same (seed, index), in any process.
  """

  def __init__(self, spec: ClipSpec, *, num_scenes: int = 1000, seed: int = 0, num_source_frames: int = 40,
               num_gaussians: int = 384, fov_deg: float = 60.0, background=None, camera_paths: str = "arc"):
    self.spec = spec.validate()
    self.camera_paths = _check_camera_paths(camera_paths, "SyntheticDataset")
    self.background = None if background is None else tuple(float(v) for v in background)
    if num_scenes < 1:
      raise WonderlandError(f"SyntheticDataset: num_scenes must be >= 1, got {num_scenes}")
    if num_source_frames < spec.num_frames:
      raise WonderlandError(f"SyntheticDataset: num_source_frames ({num_source_frames}) must be >= the clip's "
                            f"num_frames ({spec.num_frames})")
    self.num_scenes, self.seed = int(num_scenes), int(seed)
    self.num_source_frames, self.num_gaussians, self.fov_deg = int(num_source_frames), int(num_gaussians), fov_deg

  def __len__(self) -> int:
    return self.num_scenes

  def scene(self, index: int) -> Scene:
    if not 0 <= index < self.num_scenes:
      raise IndexError(f"synthetic scene {index} out of range [0, {self.num_scenes})")
    return synthetic_scene(self.seed, index, height=self.spec.height, width=self.spec.width,
                           num_source_frames=self.num_source_frames, num_gaussians=self.num_gaussians,
                           fov_deg=self.fov_deg, background=self.background, camera_paths=self.camera_paths)

  def scene_name(self, index: int) -> str:
    """Scene `index`'s name (`synthetic_scene_name`), without rendering it."""
    return synthetic_scene_name(self.seed, index)

  def clip(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    clip = sample_clip(self.scene(int(index)), self.spec, rng)
    clip["scene_index"] = np.int32(index)
    return clip

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self.clip(index, clip_rng(self.seed, index))


def write_synthetic_dataset(root: str | os.PathLike, num_scenes: int, *, seed: int = 0, height: int = 32,
                            width: int = 48, num_frames: int = 24, num_gaussians: int = 384, fov_deg: float = 60.0,
                            background=None, camera_paths: str = "arc", video: bool = False,
                            overwrite: bool = False) -> list[str]:
  """Writes `num_scenes` synthetic scenes in RealEstate10K layout; returns their names.

      root/poses/<name>.txt               RealEstate10K pose file (timestamps i * 1e6 / 30 us)
      root/frames/<name>/<timestamp>.png  one frame per camera (or, with video=True,
      root/videos/<name>.mp4              an H.264 video at 30 fps, lossy)

  The whole `root` is written in a staging folder and renamed at the end. `root` must not exist or be empty,
  unless `overwrite`. Scene i is `synthetic_scene(seed, i, background=, camera_paths=)` with `num_frames`
  cameras: the same images as the synthetic source renders on the fly, once, for runs that read them many times.
  """
  _check_camera_paths(camera_paths, "write_synthetic_dataset")
  root = Path(root)
  if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
    raise InputFileError(f"{root}: exists and is not an empty folder (pass overwrite=True to replace it)")
  check_output_directory(root, overwrite=True, flag="dataset root")  # replaces only a dataset written here
  names = [f"synthetic{index:05d}" for index in range(num_scenes)]
  timestamps = np.rint(np.arange(num_frames) * 1e6 / VIDEO_FPS).astype(np.int64)
  with atomic_directory(root) as staging:
    for index, name in progress(list(enumerate(names)), desc="synthetic scenes"):
      scene = synthetic_scene(seed, index, height=height, width=width, num_source_frames=num_frames,
                              num_gaussians=num_gaussians, fov_deg=fov_deg, background=background,
                              camera_paths=camera_paths)
      frames = scene.load_frames(np.arange(num_frames))
      cameras = Camera.from_viewmat(scene.viewmats.astype(np.float32), scene.intrinsics.astype(np.float32), width,
                                    height)
      write_realestate10k(staging / "poses" / f"{name}.txt",
                          PoseSequence(cameras, [str(t) for t in timestamps], timestamps),
                          url=f"synthetic://seed={seed}/scene={index}")
      if video:
        write_video(staging / "videos" / f"{name}.mp4", frames, fps=VIDEO_FPS)
      else:
        for timestamp, frame in zip(timestamps, frames):
          write_png(staging / "frames" / name / f"{timestamp}.png", frame)
  logger.info("wrote %d synthetic scenes to %s", num_scenes, root)
  return names
