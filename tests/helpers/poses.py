"""Pose files and camera paths for the camera tests: a COLMAP images.txt, a trajectory moved rigidly and scaled."""

import numpy as np

from wonderland_jax.camera import Camera


def colmap_images_txt(quaternions: np.ndarray, translations: np.ndarray) -> str:
  header = ("# Image list with two lines of data per image:\n"
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n")
  # Image 1 has 2D points, image 2 an empty POINTS2D line; names out of order; camera 2 for image 3.
  records = [(1, quaternions[0], translations[0], 1, "frame_b.jpg", "100.5 200.25 -1 30.0 40.0 7"),
             (2, quaternions[1], translations[1], 1, "frame_c.jpg", ""),
             (3, quaternions[2], translations[2], 2, "frame_a.jpg", "1.0 2.0 -1")]
  lines = [f"{image_id} {' '.join(map(repr, q.tolist()))} {' '.join(map(repr, t.tolist()))} {camera} {name}\n"
           f"{points}" for image_id, q, t, camera, name, points in records]
  return header + "\n".join(lines) + "\n"


def moved_rigidly(cameras: Camera, scale: float, seed: int = 0) -> Camera:
  """The same trajectory in another world frame (a random rigid motion) and units (x scale)."""
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  world = np.eye(4)
  world[:3, :3], world[:3, 3] = rotation * np.sign(np.linalg.det(rotation)), rng.normal(size=3)
  c2w = world @ np.asarray(cameras.c2w, np.float64)
  c2w[:, :3, 3] *= scale
  return Camera.from_c2w(c2w.astype(np.float32), cameras.K, cameras.width, cameras.height)
