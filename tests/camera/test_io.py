"""Tests for pose-file readers and the RealEstate10K writer, on small hand-written files."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.helpers.poses import colmap_images_txt
from wonderland_jax.camera import (
  PoseSequence,
  make_trajectory,
  read_colmap,
  read_colmap_binary,
  read_colmap_text,
  read_nerfstudio,
  read_pose_file,
  read_realestate10k,
  write_realestate10k,
)
from wonderland_jax.errors import InputFileError, WonderlandError


def random_viewmats(num: int, seed: int) -> np.ndarray:
  """(num, 3, 4) random world->camera matrices."""
  rotations = Rotation.random(num, random_state=seed).as_matrix()
  translations = np.random.default_rng(seed).normal(size=(num, 3, 1))
  return np.concatenate([rotations, translations], -1)


# ----------------------------------------------------------------------------------------- RealEstate10K


RE10K_VIEWMATS = random_viewmats(3, seed=0)
RE10K_TIMESTAMPS = [45378000, 45411000, 45445000]


def write_re10k_by_hand(path, lines_after_url: list[str] | None = None):
  if lines_after_url is None:
    lines_after_url = [
      f"{timestamp} 0.5 0.9 0.48 0.52 0 0 " + " ".join(f"{value:.12f}" for value in viewmat.reshape(-1))
      for timestamp, viewmat in zip(RE10K_TIMESTAMPS, RE10K_VIEWMATS)]
    lines_after_url.insert(1, "")  # blank lines are skipped
  path.write_text("https://www.youtube.com/watch?v=abcdefghijk\n" + "\n".join(lines_after_url) + "\n\n")
  return path


def test_read_realestate10k(tmp_path):
  poses = read_realestate10k(write_re10k_by_hand(tmp_path / "0123456789abcdef.txt"), width=640, height=360)
  assert len(poses) == 3
  assert poses.names == [str(t) for t in RE10K_TIMESTAMPS]
  np.testing.assert_array_equal(poses.timestamps, RE10K_TIMESTAMPS)
  assert (poses.cameras.width, poses.cameras.height) == (640, 360)
  assert poses.cameras.viewmat.dtype == np.float32
  np.testing.assert_allclose(poses.cameras.viewmat[:, :3], RE10K_VIEWMATS, atol=1e-6)
  np.testing.assert_allclose(poses.cameras.viewmat[:, 3], np.tile([0, 0, 0, 1], (3, 1)))
  expected_K = [[320.0, 0, 307.2], [0, 324.0, 187.2], [0, 0, 1]]
  np.testing.assert_allclose(poses.cameras.K, np.broadcast_to(expected_K, (3, 3, 3)), rtol=1e-6)


def test_realestate10k_round_trip(tmp_path):
  cameras = make_trajectory("orbit", 6, width=320, height=180, fov_deg=55.0)
  path = tmp_path / "orbit.txt"
  write_realestate10k(path, PoseSequence(cameras, [str(i) for i in range(6)]), url="https://example.com/v")
  assert [p.name for p in tmp_path.iterdir()] == ["orbit.txt"]  # no temporary file left behind
  assert path.read_text().splitlines()[0] == "https://example.com/v"
  poses = read_pose_file(path, width=320, height=180)
  np.testing.assert_allclose(poses.cameras.viewmat, cameras.viewmat, atol=1e-6)
  np.testing.assert_allclose(poses.cameras.K, cameras.K, rtol=1e-6)
  np.testing.assert_array_equal(poses.timestamps, np.arange(6))
  # Rewriting the read sequence keeps its timestamps and overwrites the file in place.
  write_realestate10k(path, poses)
  np.testing.assert_array_equal(read_realestate10k(path, 320, 180).timestamps, np.arange(6))


def test_realestate10k_errors(tmp_path):
  good = "1000 0.5 0.9 0.5 0.5 0 0 " + "1 0 0 0  0 1 0 0  0 0 1 0"  # identity pose
  truncated = write_re10k_by_hand(tmp_path / "truncated.txt", [good, good.rsplit(" ", 2)[0]])
  with pytest.raises(InputFileError, match=r"truncated\.txt:3: expected 19 fields.*got 17"):
    read_realestate10k(truncated, 64, 64)
  non_numeric = write_re10k_by_hand(tmp_path / "nan.txt", [good.replace(" 0.9 ", " abc ")])
  with pytest.raises(InputFileError, match=r"nan\.txt:2: non-numeric value 'abc'"):
    read_realestate10k(non_numeric, 64, 64)
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(InputFileError, match=r"empty\.txt: empty file"):
    read_realestate10k(tmp_path / "empty.txt", 64, 64)
  (tmp_path / "url_only.txt").write_text("https://example.com\n")
  with pytest.raises(InputFileError, match="no camera lines"):
    read_realestate10k(tmp_path / "url_only.txt", 64, 64)
  with pytest.raises(InputFileError, match=r"missing\.txt: no such file"):
    read_realestate10k(tmp_path / "missing.txt", 64, 64)
  with pytest.raises(WonderlandError, match="give width and height"):
    read_pose_file(truncated)
  poses = PoseSequence(make_trajectory("dolly", 2, width=8, height=8), ["0", "1"])
  write_realestate10k(tmp_path / "new_dir" / "x.txt", poses)  # creates the directory
  assert len(read_realestate10k(tmp_path / "new_dir" / "x.txt", 8, 8)) == 2


# -------------------------------------------------------------------------------------------- nerfstudio


GL_C2W = np.eye(4)
GL_C2W[:3, :3] = Rotation.from_euler("xyz", [10.0, -35.0, 5.0], degrees=True).as_matrix()
GL_C2W[:3, 3] = [0.5, -1.0, 2.0]


def write_transforms(directory, **overrides) -> dict:
  meta = {
    "camera_model": "OPENCV", "fl_x": 500.0, "fl_y": 510.0, "cx": 479.5, "cy": 270.0, "w": 960, "h": 540,
    "k1": 0.01, "k2": 0.0, "p1": 0.0, "p2": 0.0,
    "frames": [
      {"file_path": "images/frame_00002.png", "transform_matrix": GL_C2W.tolist(), "fl_x": 600.0},
      {"file_path": "images/frame_00001.png", "transform_matrix": np.eye(4).tolist()},
    ],
  }
  meta.update(overrides)
  (directory / "transforms.json").write_text(json.dumps(meta, indent=2))
  return meta


def test_read_nerfstudio_converts_opengl_to_opencv(tmp_path, caplog):
  write_transforms(tmp_path)
  with caplog.at_level(logging.WARNING, logger="wonderland_jax.camera.io"):
    poses = read_nerfstudio(tmp_path)  # a directory containing transforms.json
  assert sum("distortion" in record.message for record in caplog.records) == 1
  assert poses.names == ["images/frame_00001.png", "images/frame_00002.png"]  # sorted by file_path
  assert poses.timestamps is None
  assert (poses.cameras.width, poses.cameras.height) == (960, 540)
  c2w = np.asarray(poses.cameras.c2w, np.float64)
  # Identity OpenGL camera looks down world -z with image-up along world +y.
  np.testing.assert_allclose(c2w[0, :3, 2], [0, 0, -1], atol=1e-7)
  np.testing.assert_allclose(c2w[0, :3, 1], [0, -1, 0], atol=1e-7)
  np.testing.assert_allclose(c2w[0, :3, 0], [1, 0, 0], atol=1e-7)
  expected = GL_C2W @ np.diag([1.0, -1.0, -1.0, 1.0])
  np.testing.assert_allclose(c2w[1], expected, atol=1e-6)
  # Per-frame fl_x overrides the top-level value; the rest comes from the top level.
  np.testing.assert_allclose(poses.cameras.K[0], [[500.0, 0, 479.5], [0, 510.0, 270.0], [0, 0, 1]])
  np.testing.assert_allclose(poses.cameras.K[1], [[600.0, 0, 479.5], [0, 510.0, 270.0], [0, 0, 1]])
  # Dispatch on the directory and on the file itself; an explicit size resizes the cameras.
  via_dir = read_pose_file(tmp_path, width=480, height=270)
  np.testing.assert_allclose(via_dir.cameras.K[0, 0, 0], 250.0)
  via_file = read_pose_file(tmp_path / "transforms.json")
  np.testing.assert_allclose(via_file.cameras.viewmat, poses.cameras.viewmat)


def test_nerfstudio_errors(tmp_path):
  meta = write_transforms(tmp_path)
  del meta["frames"][1]["transform_matrix"]
  (tmp_path / "transforms.json").write_text(json.dumps(meta))
  with pytest.raises(InputFileError, match=r"transforms\.json: missing key 'frames\[1\]\.transform_matrix'"):
    read_nerfstudio(tmp_path / "transforms.json")
  meta = write_transforms(tmp_path)
  del meta["fl_x"], meta["frames"][0]["fl_x"]  # frames[0] (in file order) is then left without fl_x
  (tmp_path / "transforms.json").write_text(json.dumps(meta))
  with pytest.raises(InputFileError, match=r"missing key 'frames\[0\]\.fl_x'"):
    read_nerfstudio(tmp_path)
  write_transforms(tmp_path, frames=[{"file_path": "a.png", "transform_matrix": [[1, 0, 0], [0, 1, 0]]}])
  with pytest.raises(InputFileError, match=r"'frames\[0\]\.transform_matrix' must be a 4x4"):
    read_nerfstudio(tmp_path)
  (tmp_path / "transforms.json").write_text('{\n  "frames": [\n    {,\n  ]\n}')
  with pytest.raises(InputFileError, match=r"transforms\.json:3: invalid JSON"):
    read_nerfstudio(tmp_path)
  with pytest.raises(InputFileError, match="no such file"):
    read_nerfstudio(tmp_path / "nothing" / "transforms.json")
  # Only perspective cameras: a fisheye or equirectangular file is refused by name, per file or per frame.
  for model in ("OPENCV", "PINHOLE", "SIMPLE_RADIAL"):
    write_transforms(tmp_path, camera_model=model)
    assert len(read_nerfstudio(tmp_path).names) == 2
  write_transforms(tmp_path, camera_model="EQUIRECTANGULAR")
  with pytest.raises(InputFileError, match=r"transforms\.json: 'camera_model' is 'EQUIRECTANGULAR'; only perspective"):
    read_nerfstudio(tmp_path)
  meta = write_transforms(tmp_path)
  meta["frames"][1]["camera_model"] = "OPENCV_FISHEYE"
  (tmp_path / "transforms.json").write_text(json.dumps(meta))
  with pytest.raises(InputFileError, match=r"'frames\[1\]\.camera_model' is 'OPENCV_FISHEYE'"):
    read_nerfstudio(tmp_path)


# ------------------------------------------------------------------------------------------------ COLMAP


CAMERAS_TXT = """# Camera list with one line of data per camera:
#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]
# Number of cameras: 2
1 PINHOLE 640 480 500.0 505.0 320.0 240.0
2 SIMPLE_RADIAL 640 480 450.0 319.5 239.5 0.0
"""


QUATERNIONS = np.array([[np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)],  # 90 degrees about z
                        *np.roll(Rotation.random(2, random_state=3).as_quat(), 1, axis=-1)])  # xyzw -> wxyz
TRANSLATIONS = np.random.default_rng(3).normal(size=(3, 3))


def write_colmap(directory) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "cameras.txt").write_text(CAMERAS_TXT)
  (directory / "images.txt").write_text(colmap_images_txt(QUATERNIONS, TRANSLATIONS))


def test_read_colmap_text(tmp_path):
  write_colmap(tmp_path)
  poses = read_colmap_text(tmp_path)
  assert poses.names == ["frame_a.jpg", "frame_b.jpg", "frame_c.jpg"]
  assert (poses.cameras.width, poses.cameras.height) == (640, 480)
  viewmat = np.asarray(poses.cameras.viewmat, np.float64)
  # frame_b: the hand-computed 90-degree rotation about z.
  np.testing.assert_allclose(viewmat[1, :3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)
  for sorted_index, image_index in ((0, 2), (1, 0), (2, 1)):
    w, x, y, z = QUATERNIONS[image_index]
    rotation = Rotation.from_quat([x, y, z, w]).as_matrix()
    np.testing.assert_allclose(viewmat[sorted_index, :3, :3], rotation, atol=1e-6)
    np.testing.assert_allclose(viewmat[sorted_index, :3, 3], TRANSLATIONS[image_index], atol=1e-6)
    np.testing.assert_allclose(poses.cameras.position[sorted_index], -rotation.T @ TRANSLATIONS[image_index],
                               atol=1e-5)
  np.testing.assert_allclose(poses.cameras.K[0], [[450.0, 0, 319.5], [0, 450.0, 239.5], [0, 0, 1]])
  np.testing.assert_allclose(poses.cameras.K[1], [[500.0, 0, 320.0], [0, 505.0, 240.0], [0, 0, 1]])


def test_colmap_sparse_0_and_dispatch(tmp_path):
  write_colmap(tmp_path / "scene" / "sparse" / "0")
  direct = read_colmap_text(tmp_path / "scene" / "sparse" / "0")
  via_scene = read_pose_file(tmp_path / "scene")
  np.testing.assert_allclose(via_scene.cameras.viewmat, direct.cameras.viewmat)
  assert via_scene.names == direct.names
  assert read_pose_file(tmp_path / "scene" / "sparse" / "0" / "images.txt").names == direct.names
  np.testing.assert_allclose(read_pose_file(tmp_path / "scene", 320, 240).cameras.K[1, 0, 0], 250.0)


def test_colmap_errors(tmp_path):
  write_colmap(tmp_path)
  (tmp_path / "cameras.txt").write_text(CAMERAS_TXT.replace("SIMPLE_RADIAL", "FISHEYE_X"))
  with pytest.raises(InputFileError, match=r"cameras\.txt:5: unsupported camera model 'FISHEYE_X'"):
    read_colmap_text(tmp_path)
  (tmp_path / "cameras.txt").write_text(CAMERAS_TXT.replace("SIMPLE_RADIAL 640 480", "SIMPLE_RADIAL 320 480"))
  with pytest.raises(InputFileError, match="share one image size"):
    read_colmap_text(tmp_path)
  (tmp_path / "cameras.txt").write_text(CAMERAS_TXT.replace("500.0 505.0 320.0 240.0", "500.0 505.0 320.0"))
  with pytest.raises(InputFileError, match=r"cameras\.txt:4: PINHOLE needs 4 parameters, got 3"):
    read_colmap_text(tmp_path)
  (tmp_path / "cameras.txt").write_text(CAMERAS_TXT.replace("2 SIMPLE", "7 SIMPLE"))
  with pytest.raises(InputFileError, match=r"images\.txt:7: CAMERA_ID 2 is not in cameras\.txt"):
    read_colmap_text(tmp_path)
  (tmp_path / "sparse").mkdir()
  with pytest.raises(InputFileError, match="no cameras.txt and images.txt"):
    read_colmap_text(tmp_path / "sparse")
  with pytest.raises(InputFileError, match="neither transforms.json nor a COLMAP"):
    read_pose_file(tmp_path / "sparse")


def write_colmap_binary(directory, *, model_id_2: int = 2) -> None:
  """The same model as `write_colmap`, in COLMAP's binary format (src/colmap/scene/reconstruction_io.cc:
  little-endian; cameras: u64 count, then i32 id, i32 model id, u64 width, u64 height, f64 params; images: u64
  count, then i32 id, 4 f64 qvec, 3 f64 tvec, i32 camera id, NUL-terminated name, u64 num points, 24 B each).
  model_id_2: camera 2's model id (2: SIMPLE_RADIAL; 5: OPENCV_FISHEYE, which we refuse)."""
  import struct  # noqa: PLC0415
  directory.mkdir(parents=True, exist_ok=True)
  cameras = struct.pack("<Q", 2)
  cameras += struct.pack("<iiQQ4d", 1, 1, 640, 480, 500.0, 505.0, 320.0, 240.0)
  params_2 = (450.0, 319.5, 239.5, 0.0) if model_id_2 == 2 else (450.0, 450.0, 319.5, 239.5, 0.1, 0.0, 0.0, 0.0)
  cameras += struct.pack(f"<iiQQ{len(params_2)}d", 2, model_id_2, 640, 480, *params_2)
  (directory / "cameras.bin").write_bytes(cameras)
  images = struct.pack("<Q", 3)
  for image_id, camera_id, name, num_points in ((1, 1, "frame_b.jpg", 2), (2, 1, "frame_c.jpg", 0),
                                                (3, 2, "frame_a.jpg", 1)):
    images += struct.pack("<i7di", image_id, *QUATERNIONS[image_id - 1], *TRANSLATIONS[image_id - 1], camera_id)
    images += name.encode() + b"\0" + struct.pack("<Q", num_points)
    images += b"".join(struct.pack("<ddq", 1.5 * k, 2.5, -1) for k in range(num_points))
  (directory / "images.bin").write_bytes(images)


def test_read_colmap_binary_equals_text(tmp_path):
  write_colmap(tmp_path / "text")
  write_colmap_binary(tmp_path / "binary" / "sparse" / "0")
  text = read_colmap_text(tmp_path / "text")
  for binary in (read_colmap_binary(tmp_path / "binary"), read_colmap(tmp_path / "binary"),
                 read_pose_file(tmp_path / "binary")):
    assert binary.names == text.names
    np.testing.assert_allclose(binary.cameras.viewmat, text.cameras.viewmat, atol=1e-7)
    np.testing.assert_allclose(binary.cameras.K, text.cameras.K)
    assert (binary.cameras.width, binary.cameras.height) == (640, 480)


def test_read_colmap_binary_errors(tmp_path):
  write_colmap_binary(tmp_path, model_id_2=5)
  with pytest.raises(InputFileError, match=r"cameras\.bin: camera 2: unsupported camera model 'OPENCV_FISHEYE'"):
    read_colmap_binary(tmp_path)
  write_colmap_binary(tmp_path)
  data = (tmp_path / "images.bin").read_bytes()
  (tmp_path / "images.bin").write_bytes(data[:-10])
  with pytest.raises(InputFileError, match=r"images\.bin: truncated"):
    read_colmap_binary(tmp_path)
  with pytest.raises(InputFileError, match="it has a binary model"):
    read_colmap_text(tmp_path)
  with pytest.raises(InputFileError, match="no cameras.bin and images.bin"):
    read_colmap_binary(tmp_path / "nothing")
