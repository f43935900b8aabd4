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


def similar_world(c2w: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
  """Camera->world poses (F, 4, 4) in another similarity frame: x -> scale (R x + t), R a random rotation (float64;
  what a COLMAP model of the same video might hold)."""
  rng = np.random.default_rng(seed)
  rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  rotation *= np.sign(np.linalg.det(rotation))
  moved = np.array(c2w, np.float64)
  moved[:, :3, :3] = rotation @ moved[:, :3, :3]
  moved[:, :3, 3] = scale * (moved[:, :3, 3] @ rotation.T + rng.normal(size=3))
  return moved


def write_colmap_text_model(directory, c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                            names: list[str]) -> None:
  """A COLMAP text model (cameras.txt, images.txt) of camera->world poses (F, 4, 4) with intrinsics (F, 3, 3) at
  width x height: one PINHOLE camera per image, images written in reverse order (readers sort by name)."""
  from scipy.spatial.transform import Rotation  # noqa: PLC0415 (the test extra)
  directory.mkdir(parents=True, exist_ok=True)
  viewmats = np.linalg.inv(np.asarray(c2w, np.float64))
  pinhole = np.asarray(K, np.float64)[:, [0, 1, 0, 1], [0, 1, 2, 2]]  # fx fy cx cy
  cameras = [f"{i + 1} PINHOLE {width} {height} " + " ".join(repr(float(v)) for v in params)
             for i, params in enumerate(pinhole)]
  images = []
  for i in reversed(range(len(names))):
    x, y, z, w = Rotation.from_matrix(viewmats[i, :3, :3]).as_quat()
    values = " ".join(repr(float(v)) for v in (w, x, y, z, *viewmats[i, :3, 3]))
    images.append(f"{i + 1} {values} {i + 1} {names[i]}\n\n")  # an empty POINTS2D line
  (directory / "cameras.txt").write_text("\n".join(cameras) + "\n")
  (directory / "images.txt").write_text("".join(images))
