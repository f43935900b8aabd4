"""Dataset readers on tiny files in the real formats (written by the synthetic writer or by hand), and bad data."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.helpers.data import DISK_FRAMES, HEIGHT, NUM_DISK_SCENES, SPEC, WIDTH
from wonderland_jax.data import (
  ClipSource,
  DataErrors,
  read_colmap_scene,
  read_realestate10k_scene,
  scan_dataset,
  synthetic_scene,
  write_synthetic_dataset,
)
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import read_image, write_png

LOAD = list(range(SPEC.num_frames + SPEC.num_target_unseen))  # the clip renderer's batch: no extra compile
QUANTISED = 0.5 / 255 + 1e-6


def _expected(index: int):
  return synthetic_scene(0, index, height=HEIGHT, width=WIDTH, num_source_frames=DISK_FRAMES)


def _copy(root, tmp_path):
  return shutil.copytree(root, tmp_path / "dataset")


def test_realestate10k_frames_named_by_timestamp(re10k_root):
  scan = scan_dataset(re10k_root, "realestate10k", check=True)
  assert [ref.name for ref in scan.scenes] == [f"synthetic{i:05d}" for i in range(NUM_DISK_SCENES)]
  assert scan.num_skipped == 0
  scene, expected = scan.scenes[1].load(), _expected(1)
  assert (len(scene), scene.width, scene.height, scene.dataset) == (DISK_FRAMES, WIDTH, HEIGHT, "realestate10k")
  np.testing.assert_allclose(scene.viewmats, expected.viewmats, atol=1e-5)
  np.testing.assert_allclose(scene.intrinsics, expected.intrinsics, rtol=1e-6)
  np.testing.assert_allclose(scene.load_frames(LOAD), expected.load_frames(LOAD), atol=QUANTISED)


def test_realestate10k_frames_named_by_index(re10k_root, tmp_path):
  frames = tmp_path / "frames"
  frames.mkdir()
  for index, path in enumerate(sorted((re10k_root / "frames" / "synthetic00000").iterdir(),
                                      key=lambda p: int(p.stem))):
    shutil.copy(path, frames / f"frame_{index}.png")  # natural order: frame_2 before frame_10
  scene = read_realestate10k_scene(re10k_root / "poses" / "synthetic00000.txt", frames)
  np.testing.assert_allclose(scene.load_frames(LOAD), _expected(0).load_frames(LOAD), atol=QUANTISED)
  (frames / "frame_7.png").unlink()
  with pytest.raises(InputFileError, match=r"23 images but .*synthetic00000.txt has 24 cameras"):
    read_realestate10k_scene(re10k_root / "poses" / "synthetic00000.txt", frames)


def test_written_family_scenes_give_the_synthetic_clips(tmp_path):
  """A dataset rendered once to disk (as the mini Wonderland's runs read it) gives the clips the synthetic source
  renders on the fly: the same cameras, and the frames to PNG quantisation."""
  from wonderland_jax.data import SyntheticDataset, clip_rng  # noqa: PLC0415
  options = dict(background=(0.0, 0.0, 0.0), camera_paths="families")
  write_synthetic_dataset(tmp_path / "mini", 2, seed=3, height=HEIGHT, width=WIDTH, num_frames=DISK_FRAMES, **options)
  on_disk = ClipSource(scan_dataset(tmp_path / "mini", "realestate10k").scenes, SPEC, on_error="raise")
  rendered = SyntheticDataset(SPEC, num_scenes=2, seed=3, num_source_frames=DISK_FRAMES, **options)
  for index in range(2):
    disk, live = on_disk.clip(index, clip_rng(7, index)), rendered.clip(index, clip_rng(7, index))
    np.testing.assert_array_equal(disk["frame_indices"], live["frame_indices"])
    np.testing.assert_allclose(disk["viewmats"], live["viewmats"], atol=1e-5)
    np.testing.assert_allclose(disk["intrinsics"], live["intrinsics"], rtol=1e-5)
    np.testing.assert_allclose(disk["frames"], live["frames"], atol=QUANTISED)
    np.testing.assert_allclose(disk["target_images"], live["target_images"], atol=QUANTISED)
  assert (live["frames"].max(axis=-1) == 0).mean() > 0.1  # the black background, not a random colour
  with pytest.raises(WonderlandError, match="camera_paths"):
    write_synthetic_dataset(tmp_path / "bad", 1, camera_paths="spiral")


def test_realestate10k_video(tmp_path):
  root = tmp_path / "videos_dataset"
  write_synthetic_dataset(root, 1, height=HEIGHT, width=WIDTH, num_frames=DISK_FRAMES, video=True)
  scene = scan_dataset(root, "realestate10k", check=True).scenes[0].load()
  expected = _expected(0).load_frames(LOAD)
  assert np.abs(scene.load_frames(LOAD) - expected).mean() < 0.03  # H.264 is lossy
  # Every other camera only: the counts differ, so frames are found by timestamp (30 fps).
  lines = (root / "poses" / "synthetic00000.txt").read_text().splitlines()
  (tmp_path / "half.txt").write_text("\n".join(lines[:1] + lines[1::2]) + "\n")
  half = read_realestate10k_scene(tmp_path / "half.txt", root / "videos" / "synthetic00000.mp4")
  assert len(half) == DISK_FRAMES // 2
  np.testing.assert_allclose(half.load_frames([3]), scene.load_frames([6]))
  (tmp_path / "long.txt").write_text("\n".join(lines + [lines[-1].replace(lines[-1].split()[0], "5000000")]) + "\n")
  with pytest.raises(InputFileError, match=r"synthetic00000.mp4: 24 frames .*long.txt has 25 cameras"):
    read_realestate10k_scene(tmp_path / "long.txt", root / "videos" / "synthetic00000.mp4")


def _write_dl3dv(scene_dir, source, calibrated_scale: int = 2):
  """transforms.json for `source` calibrated at `calibrated_scale` x the size, images in images_<scale>/."""
  (scene_dir / f"images_{calibrated_scale}").mkdir(parents=True)
  c2w = np.linalg.inv(source.viewmats)
  c2w[:, :, 1:3] *= -1  # OpenCV -> OpenGL camera axes
  K = source.intrinsics[0] * calibrated_scale
  frames = []
  for index in range(len(source)):
    name = f"frame_{index + 1:05d}.png"
    write_png(scene_dir / f"images_{calibrated_scale}" / name, source.load_frames([index])[0])
    frames.append({"file_path": f"images/{name}", "transform_matrix": c2w[index].tolist()})
  meta = {"w": WIDTH * calibrated_scale, "h": HEIGHT * calibrated_scale, "fl_x": K[0, 0], "fl_y": K[1, 1],
          "cx": K[0, 2], "cy": K[1, 2], "frames": frames[::-1]}  # sorted by file_path on reading
  (scene_dir / "transforms.json").write_text(json.dumps(meta))


def test_dl3dv(re10k_root, tmp_path):
  source = scan_dataset(re10k_root, "realestate10k").scenes[2].load()
  _write_dl3dv(tmp_path / "1K" / "abc123", source)
  with pytest.raises(InputFileError, match=r"transforms.json: 24 of 24 images are missing, e.g. .*images/frame_00001"):
    scan_dataset(tmp_path, "dl3dv", check=True, on_error="raise")
  scan = scan_dataset(tmp_path, "dl3dv", images_dir="images_2", check=True, on_error="raise")
  assert [ref.name for ref in scan.scenes] == ["1K/abc123"]
  scene = scan.scenes[0].load()
  assert (scene.width, scene.height, scene.dataset) == (WIDTH, HEIGHT, "dl3dv")
  np.testing.assert_allclose(scene.intrinsics, source.intrinsics, rtol=1e-6)  # rescaled to the images' size
  np.testing.assert_allclose(scene.viewmats, source.viewmats, atol=1e-5)
  np.testing.assert_array_equal(scene.load_frames([0, 23]), source.load_frames([0, 23]))


def _write_colmap(scene_dir, source, *, binary=False):
  """The scene as COLMAP writes it: sparse/0/ with a text model, or (binary) COLMAP's default cameras.bin and
  images.bin (little-endian, model id 1 = PINHOLE, no 2D points), and images/."""
  model = scene_dir / "sparse" / "0"
  model.mkdir(parents=True)
  (scene_dir / "images").mkdir()
  K = source.intrinsics[0]
  params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
  numbers = lambda values: " ".join(f"{value:.17g}" for value in values)
  lines, images = [], struct.pack("<Q", len(source.viewmats))
  for index, viewmat in enumerate(source.viewmats):
    x, y, z, w = Rotation.from_matrix(viewmat[:3, :3]).as_quat()
    lines += [f"{index + 1} {numbers([w, x, y, z])} {numbers(viewmat[:3, 3])} 1 view{index:03d}.png", ""]
    images += struct.pack("<i7di", index + 1, w, x, y, z, *viewmat[:3, 3], 1) + f"view{index:03d}.png".encode()
    images += b"\0" + struct.pack("<Q", 0)
    write_png(scene_dir / "images" / f"view{index:03d}.png", source.load_frames([index])[0])
  if binary:
    (model / "cameras.bin").write_bytes(struct.pack("<QiiQQ4d", 1, 1, 1, WIDTH, HEIGHT, *params))
    (model / "images.bin").write_bytes(images)
  else:
    (model / "cameras.txt").write_text(f"# comment\n1 PINHOLE {WIDTH} {HEIGHT} {numbers(params)}\n")
    (model / "images.txt").write_text("\n".join(lines) + "\n")


def test_colmap(re10k_root, tmp_path):
  source = scan_dataset(re10k_root, "realestate10k").scenes[0].load()
  _write_colmap(tmp_path / "garden", source)
  _write_colmap(tmp_path / "lawn", source, binary=True)  # COLMAP's default output: cameras.bin + images.bin
  scan = scan_dataset(tmp_path, "colmap", check=True, on_error="raise")
  assert [ref.name for ref in scan.scenes] == ["garden", "lawn"]
  for ref in scan.scenes:
    scene = ref.load()
    np.testing.assert_allclose(scene.viewmats, source.viewmats, atol=1e-5)
    np.testing.assert_allclose(scene.intrinsics, source.intrinsics, rtol=1e-6)
    np.testing.assert_array_equal(scene.load_frames([4]), source.load_frames([4]))
  (tmp_path / "garden" / "images" / "view005.png").unlink()
  with pytest.raises(InputFileError, match=r"garden: 1 of 24 images are missing, e.g. .*view005.png"):
    read_colmap_scene(tmp_path / "garden", tmp_path / "garden" / "images")


# ---------------------------------------------------------------------------------------------- bad data


def test_missing_frames_folder_skipped_or_fatal(re10k_root, tmp_path):
  root = _copy(re10k_root, tmp_path)
  shutil.rmtree(root / "frames" / "synthetic00001")
  scan = scan_dataset(root, "realestate10k")
  assert [ref.name for ref in scan.scenes] == ["synthetic00000", "synthetic00002"]
  assert scan.num_skipped == 1 and "poses/synthetic00001.txt: no frames" in scan.skipped[0]
  with pytest.raises(InputFileError, match=r"poses/synthetic00001.txt: no frames for scene 'synthetic00001'"):
    scan_dataset(root, "realestate10k", on_error="raise")


def test_missing_frame_and_nan_pose(re10k_root, tmp_path):
  root = _copy(re10k_root, tmp_path)
  next(iter(sorted((root / "frames" / "synthetic00000").iterdir()))).unlink()
  pose_file = root / "poses" / "synthetic00002.txt"
  lines = pose_file.read_text().splitlines()
  lines[2] = " ".join(lines[2].split()[:-1] + ["nan"])
  pose_file.write_text("\n".join(lines) + "\n")
  errors = DataErrors("skip")
  scan = scan_dataset(root, "realestate10k", check=True, on_error=errors)
  assert [ref.name for ref in scan.scenes] == ["synthetic00001"]
  assert errors.count == 2 and scan.skipped == errors.messages
  assert "frames/synthetic00000: missing 1 of 24 frames named by the timestamps in" in scan.skipped[0]
  assert "poses/synthetic00002.txt:3: non-finite value 'nan'" in scan.skipped[1]
  # Without check, the scan keeps them and the clip loader meets the errors.
  scan = scan_dataset(root, "realestate10k")
  source = ClipSource(scan.scenes, SPEC, on_error="skip")
  assert source[0] is None and source[2] is None and source.errors.count == 2
  assert source[1]["frames"].shape == (9, HEIGHT, WIDTH, 3)
  with pytest.raises(InputFileError, match=r"synthetic00002.txt:3: non-finite"):
    ClipSource(scan.scenes, SPEC, on_error="raise")[2]


def test_unreadable_image(re10k_root, tmp_path):
  root = _copy(re10k_root, tmp_path)
  for path in (root / "frames" / "synthetic00001").iterdir():
    path.write_bytes(b"not a png")
  scan = scan_dataset(root, "realestate10k", check=True)  # headers are only read for the first frame
  assert len(scan) == 2 and "synthetic00001" in scan.skipped[0] and "cannot read image" in scan.skipped[0]
  source = ClipSource(scan_dataset(root, "realestate10k").scenes, SPEC, on_error="skip")
  assert source[1] is None and source.errors.count == 1 and "frames/synthetic00001/" in source.errors.messages[0]
  with pytest.raises(InputFileError, match=r"frames/synthetic00001/\d+\.png: cannot read image"):
    read_image(next((root / "frames" / "synthetic00001").iterdir()))


def test_every_scene_bad_is_fatal(re10k_root, tmp_path):
  root = _copy(re10k_root, tmp_path)
  shutil.rmtree(root / "frames")
  with pytest.raises(InputFileError, match=r"no usable realestate10k scenes found; 3 skipped, first: .*synthetic00000"):
    scan_dataset(root, "realestate10k")
  refs = scan_dataset(re10k_root, "realestate10k").scenes
  source = ClipSource([type(ref)(ref.format, ref.name, ref.poses, tmp_path / "gone") for ref in refs], SPEC)
  assert source[0] is None and source[1] is None
  with pytest.raises(InputFileError, match=r"every one of the 3 scenes failed to load; first error: .*gone"):
    source[2]


def test_scan_arguments(tmp_path):
  with pytest.raises(WonderlandError, match="unknown dataset format 'nerf'"):
    scan_dataset(tmp_path, "nerf")
  with pytest.raises(InputFileError, match="no such dataset folder"):
    scan_dataset(tmp_path / "missing", "acid")
  with pytest.raises(InputFileError, match=r"no RealEstate10K pose files"):
    scan_dataset(tmp_path, "acid")
  with pytest.raises(WonderlandError, match="on_error must be one of"):
    DataErrors("ignore")
