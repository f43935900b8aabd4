"""Pose re-basing, scale normalisation and the conditioning rays a model reads: the one implementation that the
training clips (`data/clips`), the training steps (`train/`), sampling (`diffusion/`), reconstruction and
evaluation share, so training and inference cannot drift apart.

Re-basing expresses every camera in the first camera's frame (its c2w becomes the identity). Scale
normalisation then scales the world uniformly about that origin by a factor s (translations x s), computed from
the trajectory's size over the first `num_reference` cameras (all by default), its *extent* e being the largest
distance of a camera centre from camera 0's centre:

  'max_distance'  s = target / e: the farthest camera ends at distance `target` (the default, what every
                  checkpoint trained before 'extent_floor' existed used);
  'path_length'   s = target / L, L the summed distance between consecutive camera centres;
  'extent_floor'  s = target / max(e, floor), `floor` (`scale_floor`, in the dataset's units, default
                  DEFAULT_SCALE_FLOOR) a lower bound on the extent: a path at least `floor` long is normalised
                  exactly as by 'max_distance'; a shorter one (a pure rotation, a 1 cm baseline) is scaled by
                  target / floor, not blown up to `target`, so the scene's depth stays in the range the LaLRM
                  predicts (`LaLRMConfig.near` .. `far`);
  'none'          s = 1 (the dataset's units).

'max_distance' and 'path_length' at zero size (a static camera, a pure rotation: below 16 float eps of the
re-based coordinates, at least 1e-9) leave the trajectory unscaled (s = 1: never a division by ~0, never inf or
NaN). Above that tolerance they divide by the size however small: a 1e-4 baseline is scaled 1e4 x, and the
round-off of a pure rotation read from a pose file (9 digits: ~1e-9 x the centres' distance from the world
origin) or computed in float32 (~1e-7 x) is taken for motion and scaled to `target` (s ~ 1e6): finite, but the
scene's depth goes far outside the LaLRM's range. That is what 'extent_floor' is for; how to choose its floor:
docs/lalrm.md, "Pose normalisation".

Re-basing, and scaling with 'max_distance', 'path_length' or 'none', are idempotent: normalised poses normalise
to themselves, which is why a training step may call `conditioning_rays` on clips the data pipeline has already
normalised. 'extent_floor' is not (a path shorter than the floor comes out shorter than `target` and would be
scaled up again): poses already normalised with it are re-normalised with `renormalization(...)`, the same mode
with the floor set to the target, which leaves them as they are. Code that may see normalised poses (the
training steps, `models.lalrm.predict`) passes those settings.

Every function takes numpy arrays (host side; float64 stays float64) or jax arrays (then it traces inside
`jit` / `vmap`), with the same arithmetic for both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.camera.camera import Camera, rigid_inverse
from wonderland_jax.camera.rays import plucker_rays
from wonderland_jax.errors import WonderlandError

SCALE_MODES = ("max_distance", "path_length", "extent_floor", "none")
DEFAULT_SCALE_FLOOR = 0.1  # 'extent_floor': the smallest extent scaled to the target, in the dataset's units


def as_pose_array(c2w, name: str, batched: bool = True) -> np.ndarray:
  """Float numpy copy of (F, 4, 4) (or (4, 4) when not batched) poses; (3, 4) rows are completed."""
  c2w = np.asarray(c2w)
  if not np.issubdtype(c2w.dtype, np.floating):
    c2w = c2w.astype(np.float64)
  if c2w.shape[-2:] == (3, 4):
    bottom = np.broadcast_to(np.array([0, 0, 0, 1], c2w.dtype), c2w.shape[:-2] + (1, 4))
    c2w = np.concatenate([c2w, bottom], -2)
  expected_ndim = 3 if batched else 2
  if c2w.ndim != expected_ndim or c2w.shape[-2:] != (4, 4) or (batched and c2w.shape[0] == 0):
    expected = "(F, 4, 4) with F >= 1" if batched else "(4, 4)"
    raise WonderlandError(f"{name} must have shape {expected}, got {c2w.shape}")
  return c2w.copy()


def _poses(c2w, name: str):
  """jax arrays as they are (traceable); anything else as a checked float numpy copy."""
  return c2w if isinstance(c2w, jax.Array) else as_pose_array(c2w, name)


def rebase_to_first(c2w):
  """(F, 4, 4) c2w -> the same poses in frame 0's frame: inv(c2w_0) @ c2w_i (frame 0 becomes identity)."""
  c2w = _poses(c2w, "c2w")
  return rigid_inverse(c2w[0]) @ c2w


def mirror_left_right(c2w) -> np.ndarray:
  """Camera->world poses (N, 4, 4) reflected left-right in the first camera's frame: every camera's
  position and orientation mirrored through the first camera's y-z plane (x -> -x), so a path that orbits or
  pans right becomes the same path to the left (still proper rotations: M R M with M = diag(-1, 1, 1)).
  The first camera is unchanged; symmetric motions (dolly, rise) map to themselves."""
  poses = as_pose_array(c2w, "c2w")
  first = poses[:1]
  local = np.linalg.inv(first) @ poses
  flip = np.diag([-1.0, 1.0, 1.0, 1.0])
  return first @ (flip @ local @ flip)


def trajectory_scale(c2w, mode: str = "max_distance", target: float = 1.0, num_reference: int | None = None, *,
                     floor: float = DEFAULT_SCALE_FLOOR):
  """The factor `normalize_trajectory_scale` multiplies translations by (module docstring): a Python float for
  numpy input, a scalar jax array for jax input. `floor` (a positive Python float, the dataset's units) is read
  by 'extent_floor' only."""
  xp = jnp if isinstance(c2w, jax.Array) else np
  if mode not in SCALE_MODES:
    raise WonderlandError(f"pose normalisation: unknown mode {mode!r}; valid: {', '.join(SCALE_MODES)}")
  if mode == "none":
    return 1.0 if xp is np else jnp.ones((), c2w.dtype)
  positions = c2w[:num_reference, :3, 3]
  if mode == "extent_floor":
    if isinstance(floor, (int, float)) and not (np.isfinite(floor) and floor > 0):
      raise WonderlandError(f"pose normalisation: 'extent_floor' needs a positive finite floor, got {floor}")
    extent = xp.max(xp.linalg.norm(positions - positions[0], axis=-1))
    scale = target / xp.maximum(extent, floor)
    return float(scale) if xp is np else scale.astype(c2w.dtype)
  if mode == "max_distance":
    size = xp.max(xp.linalg.norm(positions - positions[0], axis=-1))
  else:
    size = xp.sum(xp.linalg.norm(xp.diff(positions, axis=0), axis=-1))
  tolerance = xp.maximum(1e-9, 16 * np.finfo(c2w.dtype).eps * xp.maximum(1.0, xp.max(xp.abs(positions))))
  scale = xp.where(size > tolerance, target / xp.where(size > tolerance, size, 1.0), 1.0)
  return float(scale) if xp is np else scale.astype(c2w.dtype)


def renormalization(scale_mode: str = "max_distance", scale_target: float = 1.0,
                    scale_floor: float = DEFAULT_SCALE_FLOOR) -> dict:
  """{'scale_mode', 'scale_target', 'scale_floor'} that normalise poses *already normalised* with these settings
  to themselves (module docstring): the same settings, except that an 'extent_floor' floor becomes the target
  (the normalised extent is at most the target, so target / max(extent, target) = 1)."""
  floor = scale_target if scale_mode == "extent_floor" else scale_floor
  return {"scale_mode": scale_mode, "scale_target": scale_target, "scale_floor": floor}


def _scaled(c2w, scale):
  if isinstance(c2w, jax.Array):
    return c2w.at[:, :3, 3].multiply(scale)
  scaled = c2w.copy()
  scaled[:, :3, 3] *= scale
  return scaled


def normalize_trajectory_scale(c2w, target: float = 1.0, mode: str = "max_distance", *,
                               floor: float = DEFAULT_SCALE_FLOOR):
  """Uniformly rescales a trajectory's translations so its size is `target` (rotations unchanged).

  The world is scaled about its origin (positions p_i -> s * p_i), exactly as if the scene had been
  scaled, so the result is invariant to the input's metric scale (RealEstate10K, ACID and DL3DV use
  different units). Frame 0 stays at the origin when it started there (e.g. after `rebase_to_first`).

  Args:
    c2w: (F, 4, 4) camera->world matrices.
    target: the size the trajectory gets.
    mode: one of SCALE_MODES (module docstring), measured over all F cameras.
    floor: 'extent_floor' only: the smallest extent scaled to `target` (input units).

  Returns:
    (F, 4, 4) rescaled c2w, same float dtype. A degenerate trajectory (all centres at one place, up to
    float round-off) is returned unchanged, except by 'extent_floor' (translations x target / floor).
  """
  c2w = _poses(c2w, "c2w")
  return _scaled(c2w, trajectory_scale(c2w, mode, target, floor=floor))


def normalize_poses(viewmats, num_reference: int | None = None, mode: str = "max_distance",
                    target: float = 1.0, floor: float = DEFAULT_SCALE_FLOOR):
  """Re-bases world->camera matrices (n, 4, 4) on camera 0 and rescales them (module docstring).

  The size is measured on the first `num_reference` cameras (all when None); `floor` is 'extent_floor''s, in
  the input's units. numpy input is computed in float64 and returns ((n, 4, 4) float64 viewmats with
  viewmats[0] = identity, the scale as a float); jax input keeps its dtype and returns a scalar array. The scale
  multiplies translations (1.0 for 'none' or a static camera but target / floor for 'extent_floor' there):
  normalised = input units x scale.
  """
  if isinstance(viewmats, jax.Array):
    c2w = rebase_to_first(jnp.linalg.inv(viewmats))
  else:
    c2w = rebase_to_first(np.linalg.inv(np.asarray(viewmats, np.float64)))
  scale = trajectory_scale(c2w, mode, target, num_reference, floor=floor)
  if isinstance(viewmats, jax.Array):
    result = jnp.linalg.inv(_scaled(c2w, scale)).at[0].set(jnp.eye(4, dtype=viewmats.dtype))
  else:
    result = np.linalg.inv(_scaled(c2w, scale))
    result[0] = np.eye(4)  # exact, not up to round-off
  return result, scale


def conditioning_rays(cameras: Camera, height: int | None = None, width: int | None = None, *,
                      scale_mode: str = "max_distance", scale_target: float = 1.0,
                      scale_floor: float = DEFAULT_SCALE_FLOOR) -> jax.Array:
  """F cameras (any world frame and units, OpenCV) -> the (F, height, width, 6) Plücker rays a camera-conditioned
  model reads: re-based on camera 0, scale-normalised over all F cameras (`normalize_poses(viewmats, F,
  scale_mode, scale_target, scale_floor)`, the settings the model trained with; cameras normalised already take
  `renormalization` of them) and embedded at (height, width) (default the cameras' size; intrinsics scaled to
  it). Traceable: training steps call it on a batch under `vmap`."""
  if len(cameras.batch_shape) != 1:
    raise WonderlandError(f"expected a 1-D batch of cameras (F,), got batch shape {cameras.batch_shape}")
  viewmats = jnp.asarray(cameras.viewmat, jnp.float32)
  normalized, _ = normalize_poses(viewmats, None, scale_mode, scale_target, scale_floor)
  return plucker_rays(Camera(normalized, jnp.asarray(cameras.K, jnp.float32), cameras.width, cameras.height),
                      height, width)
