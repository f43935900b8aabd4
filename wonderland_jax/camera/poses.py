"""Pose re-basing, scale normalisation and the conditioning rays a model reads: the one implementation that the
training clips (`data/clips`), the training steps (`train/`), sampling (`diffusion/`), reconstruction and
evaluation share, so training and inference cannot drift apart.

Re-basing expresses every camera in the first camera's frame (its c2w becomes the identity). Scale
normalisation then scales the world uniformly about that origin so that the trajectory's size, measured over
the first `num_reference` cameras (all by default), becomes `target`:

  'max_distance'  the largest distance of a camera centre from camera 0's centre (the default);
  'path_length'   the summed distance between consecutive camera centres;
  'none'          unscaled (the dataset's units).

A trajectory of size ~0 (a static camera, a pure rotation: below 16 float eps of its coordinates, at least
1e-9) is left unscaled (scale 1). Both steps are idempotent: normalised poses normalise to themselves, which is
why a training step may call `conditioning_rays` on clips the data pipeline has already normalised.

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

SCALE_MODES = ("max_distance", "path_length", "none")


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


def trajectory_scale(c2w, mode: str = "max_distance", target: float = 1.0, num_reference: int | None = None):
  """The factor `normalize_trajectory_scale` multiplies translations by (module docstring): a Python float for
  numpy input, a scalar jax array for jax input."""
  xp = jnp if isinstance(c2w, jax.Array) else np
  if mode not in SCALE_MODES:
    raise WonderlandError(f"pose normalisation: unknown mode {mode!r}; valid: {', '.join(SCALE_MODES)}")
  if mode == "none":
    return 1.0 if xp is np else jnp.ones((), c2w.dtype)
  positions = c2w[:num_reference, :3, 3]
  if mode == "max_distance":
    size = xp.max(xp.linalg.norm(positions - positions[0], axis=-1))
  else:
    size = xp.sum(xp.linalg.norm(xp.diff(positions, axis=0), axis=-1))
  tolerance = xp.maximum(1e-9, 16 * np.finfo(c2w.dtype).eps * xp.maximum(1.0, xp.max(xp.abs(positions))))
  scale = xp.where(size > tolerance, target / xp.where(size > tolerance, size, 1.0), 1.0)
  return float(scale) if xp is np else scale.astype(c2w.dtype)


def _scaled(c2w, scale):
  if isinstance(c2w, jax.Array):
    return c2w.at[:, :3, 3].multiply(scale)
  scaled = c2w.copy()
  scaled[:, :3, 3] *= scale
  return scaled


def normalize_trajectory_scale(c2w, target: float = 1.0, mode: str = "max_distance"):
  """Uniformly rescales a trajectory's translations so its size is `target` (rotations unchanged).

  The world is scaled about its origin (positions p_i -> s * p_i), exactly as if the scene had been
  scaled, so the result is invariant to the input's metric scale (RealEstate10K, ACID and DL3DV use
  different units). Frame 0 stays at the origin when it started there (e.g. after `rebase_to_first`).

  Args:
    c2w: (F, 4, 4) camera->world matrices.
    target: the size the trajectory gets.
    mode: one of SCALE_MODES (module docstring), measured over all F cameras.

  Returns:
    (F, 4, 4) rescaled c2w, same float dtype. A degenerate trajectory (all centres at one place, up to
    float round-off) is returned unchanged.
  """
  c2w = _poses(c2w, "c2w")
  return _scaled(c2w, trajectory_scale(c2w, mode, target))


def normalize_poses(viewmats, num_reference: int | None = None, mode: str = "max_distance",
                    target: float = 1.0):
  """Re-bases world->camera matrices (n, 4, 4) on camera 0 and rescales them (module docstring).

  The size is measured on the first `num_reference` cameras (all when None). numpy input is computed in
  float64 and returns ((n, 4, 4) float64 viewmats with viewmats[0] = identity, the scale as a float); jax input
  keeps its dtype and returns a scalar array. The scale multiplies translations (1.0 for 'none' or a static
  camera): normalised = input units x scale.
  """
  if isinstance(viewmats, jax.Array):
    c2w = rebase_to_first(jnp.linalg.inv(viewmats))
  else:
    c2w = rebase_to_first(np.linalg.inv(np.asarray(viewmats, np.float64)))
  scale = trajectory_scale(c2w, mode, target, num_reference)
  if isinstance(viewmats, jax.Array):
    result = jnp.linalg.inv(_scaled(c2w, scale)).at[0].set(jnp.eye(4, dtype=viewmats.dtype))
  else:
    result = np.linalg.inv(_scaled(c2w, scale))
    result[0] = np.eye(4)  # exact, not up to round-off
  return result, scale


def conditioning_rays(cameras: Camera, height: int | None = None, width: int | None = None, *,
                      scale_mode: str = "max_distance", scale_target: float = 1.0) -> jax.Array:
  """F cameras (any world frame and units, OpenCV) -> the (F, height, width, 6) Plücker rays a camera-conditioned
  model reads: re-based on camera 0, scale-normalised over all F cameras (`normalize_poses(viewmats, F,
  scale_mode, scale_target)`, the settings the model trained with) and embedded at (height, width) (default the
  cameras' size; intrinsics scaled to it). Traceable: training steps call it on a batch under `vmap`."""
  if len(cameras.batch_shape) != 1:
    raise WonderlandError(f"expected a 1-D batch of cameras (F,), got batch shape {cameras.batch_shape}")
  viewmats = jnp.asarray(cameras.viewmat, jnp.float32)
  normalized, _ = normalize_poses(viewmats, None, scale_mode, scale_target)
  return plucker_rays(Camera(normalized, jnp.asarray(cameras.K, jnp.float32), cameras.width, cameras.height),
                      height, width)
