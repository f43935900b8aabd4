"""Camera-trajectory presets and pose utilities (host-side numpy, float64 internally).

Every preset returns a batched `Camera` of `num_frames` cameras (float32). Motions are defined in the
start camera's own OpenCV frame (x right, y down, z forward) and applied on the right of `start_c2w`:
c2w_i = start_c2w @ motion_i with motion_0 = identity, so frame 0 is exactly the start pose and
"forward", "right" and "vertical" always mean the start camera's axes, whatever its world pose.
Progress along a trajectory is linear in the frame index: t_i = i / (num_frames - 1), so the last frame is
the end pose; except for closed loops (orbit and pan by a non-zero multiple of 360 degrees), where
t_i = i / num_frames: the end pose is the start pose, so it is left out and a looping video does not show
the first frame twice.

Keyword options shared by all presets (CAMERA_OPTIONS): `start_c2w` (4, 4) OpenCV camera->world
(default identity); `K` (3, 3) pixels, or leave it None and give `fov_deg`, the horizontal field of view
(default 60 degrees; square pixels, principal point at the image centre); `width`, `height` (default
1024 x 576, the resolution Wonderland generates at).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import numpy as np

from wonderland_jax.camera.camera import Camera, check_cameras
from wonderland_jax.camera.poses import as_pose_array, rebase_to_first
from wonderland_jax.errors import WonderlandError

DEFAULT_WIDTH = 1024
DEFAULT_HEIGHT = 576
DEFAULT_FOV_DEG = 60.0
OPENCV_WORLD_UP = (0.0, -1.0, 0.0)  # "up" in a frame with OpenCV axes (y points down)
CAMERA_OPTIONS = ("start_c2w", "K", "width", "height", "fov_deg")  # keyword options of every preset


def look_at(eye, target, up=OPENCV_WORLD_UP) -> np.ndarray:
  """OpenCV camera->world matrices of cameras at `eye` looking at `target`.

  Args:
    eye, target: (..., 3) positions in world coordinates (broadcast together).
    up: (3,) or (..., 3) the world's up direction. The default (0, -1, 0) is "up" for a world frame with
      OpenCV axes (e.g. the frame of an identity start camera); use (0, 0, 1) for a z-up world, etc.

  Returns:
    (..., 4, 4) float64 c2w: column 2 (camera z) points from eye to target, column 1 (camera y, image
    down) points along -up projected orthogonally to the viewing direction, column 0 = y x z (image right).
  """
  eye, target, up = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (eye, target, up)))
  forward = target - eye
  forward_norm = np.linalg.norm(forward, axis=-1, keepdims=True)
  if np.any(forward_norm <= 1e-12):
    raise WonderlandError("look_at: eye and target coincide, the viewing direction is undefined")
  forward = forward / forward_norm
  right = np.cross(forward, up)
  right_norm = np.linalg.norm(right, axis=-1, keepdims=True)
  if np.any(right_norm <= 1e-9):
    raise WonderlandError(f"look_at: viewing direction is parallel to up={up.reshape(-1, 3)[0].tolist()}")
  right = right / right_norm
  down = np.cross(forward, right)
  c2w = np.zeros(eye.shape[:-1] + (4, 4))
  c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
  c2w[..., 3, 3] = 1.0
  return c2w


def orbit(num_frames: int, *, radius: float = 2.0, degrees: float = 60.0, **camera_options) -> Camera:
  """Orbit about the vertical axis through a target `radius` ahead of the start camera.

  The camera keeps looking at the target (which stays at the principal point) and its distance to the
  target stays `radius`. `degrees` is the total angle; positive moves the camera to its right (+x). A full
  loop (a multiple of 360) has `num_frames` evenly spaced distinct frames, the start pose not repeated.
  """
  target = np.array([0.0, 0.0, radius])
  angles = np.deg2rad(degrees) * _progress(num_frames, loop=_is_full_turn(degrees))
  motions = _translation(target) @ _rotation_about_y(-angles) @ _translation(-target)
  return _cameras(motions, **camera_options)


def dolly(num_frames: int, *, distance: float = 1.0, **camera_options) -> Camera:
  """Move forward (start camera's +z) by `distance` in total; orientation fixed."""
  offsets = _progress(num_frames)[:, None] * np.array([0.0, 0.0, distance])
  return _cameras(_translation(offsets), **camera_options)


def zoom_out(num_frames: int, *, distance: float = 1.0, **camera_options) -> Camera:
  """Move backward (start camera's -z) by `distance` in total; orientation fixed."""
  return dolly(num_frames, distance=-distance, **camera_options)


def pan(num_frames: int, *, degrees: float = 45.0, direction: str = "right", **camera_options) -> Camera:
  """Rotate in place about the start camera's vertical (y) axis by `degrees`, towards `direction`.

  direction: 'right' turns the viewing direction towards the start camera's +x, 'left' towards -x.
  A full turn (a multiple of 360 degrees) does not repeat the start pose (see `orbit`).
  """
  if direction not in ("left", "right"):
    raise WonderlandError(f"pan: direction must be 'left' or 'right', got {direction!r}")
  signed = degrees if direction == "right" else -degrees
  angles = np.deg2rad(signed) * _progress(num_frames, loop=_is_full_turn(degrees))
  return _cameras(_rotation_about_y(angles), **camera_options)


def spiral(num_frames: int, *, radius: float = 0.2, num_rotations: float = 1.0, distance: float = 1.0,
           focus_distance: float = 2.0, **camera_options) -> Camera:
  """Circle of `radius` around a forward axis, `num_rotations` turns, while advancing `distance`.

  Each camera looks at the point on the axis `focus_distance` ahead of its own depth along the axis. The
  start camera is the first point of the circle, so the axis lies `radius` from it, tilted by
  atan(radius / focus_distance) from its viewing direction (the start camera looks at the focus point).
  """
  if focus_distance <= 0:
    raise WonderlandError(f"spiral: focus_distance must be positive, got {focus_distance}")
  progress = _progress(num_frames)
  angles = 2 * np.pi * num_rotations * progress
  depth = distance * progress
  # Canonical spiral about the z axis; then re-based so that frame 0 is the identity.
  eyes = np.stack([radius * np.cos(angles), radius * np.sin(angles), depth], -1)
  targets = np.stack([np.zeros_like(depth), np.zeros_like(depth), depth + focus_distance], -1)
  return _cameras(rebase_to_first(look_at(eyes, targets)), **camera_options)


PRESETS: dict[str, Callable[..., Camera]] = {
  "orbit": orbit,
  "dolly": dolly,
  "zoom-out": zoom_out,
  "pan-left": functools.partial(pan, direction="left"),
  "pan-right": functools.partial(pan, direction="right"),
  "spiral": spiral,
}


def make_trajectory(name: str, num_frames: int, **kwargs) -> Camera:
  """The preset `name` (a key of PRESETS) with `num_frames` cameras; kwargs go to the preset.

  Raises WonderlandError for an unknown name or parameter, listing the valid ones.
  """
  if name not in PRESETS:
    raise WonderlandError(f"unknown trajectory {name!r}; valid names: {', '.join(PRESETS)}")
  preset = PRESETS[name]
  fixed = getattr(preset, "keywords", {})  # e.g. direction of the pan-left / pan-right partials
  valid = [p.name for p in inspect.signature(preset).parameters.values()
           if p.kind == p.KEYWORD_ONLY and p.name not in fixed] + list(CAMERA_OPTIONS)
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise WonderlandError(f"trajectory {name!r}: unknown parameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(valid)}")
  for key, value in kwargs.items():
    if isinstance(value, (int, float)) and not np.isfinite(value):
      raise WonderlandError(f"trajectory {name!r}: {key}={value} is not a finite number")
  fov = kwargs.get("fov_deg")
  if fov is not None and not 0 < fov < 180:
    raise WonderlandError(f"trajectory {name!r}: fov_deg={fov} must be in (0, 180) degrees")
  return check_cameras(preset(num_frames, **kwargs), f"trajectory {name!r}")


def _cameras(motions: np.ndarray, start_c2w=None, K=None, width: int = DEFAULT_WIDTH,
             height: int = DEFAULT_HEIGHT, fov_deg: float | None = None) -> Camera:
  """Batched float32 Camera with c2w_i = start_c2w @ motions_i; see the module docstring for the rest."""
  start = np.eye(4) if start_c2w is None else as_pose_array(start_c2w, "start_c2w", batched=False)
  c2w = (start.astype(np.float64) @ motions).astype(np.float32)
  if K is not None:
    if fov_deg is not None:
      raise WonderlandError("trajectory: give either K or fov_deg, not both")
    K = np.asarray(K, np.float32)
    if K.shape != (3, 3):
      raise WonderlandError(f"trajectory: K must have shape (3, 3), got {K.shape}")
    return Camera.from_c2w(c2w, K, width, height)
  return Camera.from_fov(c2w, width, height, fov_x_deg=DEFAULT_FOV_DEG if fov_deg is None else fov_deg)


def _progress(num_frames: int, loop: bool = False) -> np.ndarray:
  """(F,) the fraction of the motion done at frame i: t_i = i / (F - 1) ([0.] for a single frame), or for a
  closed `loop`, whose end is its start, t_i = i / F (the end left out)."""
  if int(num_frames) != num_frames or num_frames < 1:
    raise WonderlandError(f"num_frames must be a positive integer, got {num_frames!r}")
  return np.linspace(0.0, 1.0, int(num_frames), endpoint=not loop)


def _is_full_turn(degrees: float) -> bool:
  """Whether a rotation by `degrees` ends where it starts: a non-zero multiple of 360."""
  return degrees != 0 and abs(math.remainder(degrees, 360.0)) < 1e-9


def _translation(offsets: np.ndarray) -> np.ndarray:
  """(..., 3) offsets -> (..., 4, 4) pure translations."""
  offsets = np.asarray(offsets, np.float64)
  matrices = np.broadcast_to(np.eye(4), offsets.shape[:-1] + (4, 4)).copy()
  matrices[..., :3, 3] = offsets
  return matrices


def _rotation_about_y(angles: np.ndarray) -> np.ndarray:
  """(F,) angles (radians) -> (F, 4, 4) rotations about +y; positive turns +z towards +x."""
  cos, sin = np.cos(angles), np.sin(angles)
  matrices = np.broadcast_to(np.eye(4), np.shape(angles) + (4, 4)).copy()
  matrices[..., 0, 0], matrices[..., 0, 2] = cos, sin
  matrices[..., 2, 0], matrices[..., 2, 2] = -sin, cos
  return matrices
