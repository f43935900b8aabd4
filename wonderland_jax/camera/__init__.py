"""Cameras: the `Camera` pytree, Plücker rays, pose re-basing / normalisation and the conditioning rays models
read, trajectories and pose-file readers."""

from wonderland_jax.camera.camera import Camera, check_cameras, intrinsics_matrix, rigid_inverse
from wonderland_jax.camera.io import (
  PoseSequence,
  read_colmap,
  read_colmap_binary,
  read_colmap_text,
  read_nerfstudio,
  read_pose_file,
  read_realestate10k,
  write_realestate10k,
)
from wonderland_jax.camera.poses import (
  DEFAULT_SCALE_FLOOR,
  SCALE_MODES,
  conditioning_rays,
  mirror_left_right,
  normalize_poses,
  normalize_trajectory_scale,
  rebase_to_first,
  renormalization,
)
from wonderland_jax.camera.rays import pixel_centers, plucker_rays, ray_bundle, relative_to_first
from wonderland_jax.camera.trajectories import (
  CAMERA_OPTIONS,
  PRESETS,
  dolly,
  look_at,
  make_trajectory,
  orbit,
  pan,
  spiral,
  zoom_out,
)
