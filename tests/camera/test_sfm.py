"""`camera.sfm`: aligning estimated poses to the conditioning path, `--poses colmap:<dir>` models, and pycolmap
structure-from-motion on a rendered synthetic video whose true poses are known (skipped without pycolmap)."""

import argparse
import logging
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.poses import similar_world, write_colmap_text_model
from wonderland_jax.camera import Camera, make_trajectory
from wonderland_jax.camera.sfm import (
  AlignmentError,
  PoseSource,
  align_to_conditioning,
  min_registered,
  pose_source_flag,
  reconstruction_cameras,
  rotation_angles,
)
from wonderland_jax.data.synthetic import family_camera_path, pinhole_intrinsics, random_scene
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.splat import rasterize

NAMES = [f"frame_{index:05d}.png" for index in range(13)]


def _conditioning(num_frames=13, width=160, height=128, seed=0) -> Camera:
  """A smooth orbit of the synthetic dataset's kind, float32 like every pose file read."""
  c2w = family_camera_path(np.random.default_rng(seed), num_frames, "orbit")
  K = np.broadcast_to(pinhole_intrinsics(width, height, 60.0), (num_frames, 3, 3))
  return Camera.from_c2w(c2w.astype(np.float32), K.astype(np.float32), width, height)


def pose_errors(estimated: Camera, truth: Camera) -> tuple[np.ndarray, np.ndarray]:
  """Per frame: the rotation angle between the two orientations (radians) and the centre distance relative to
  the true path's extent (the largest distance from camera 0)."""
  a, b = np.asarray(estimated.c2w, np.float64), np.asarray(truth.c2w, np.float64)
  extent = np.max(np.linalg.norm(b[:, :3, 3] - b[0, :3, 3], axis=-1))
  return rotation_angles(a[:, :3, :3], b[:, :3, :3]), np.linalg.norm(a[:, :3, 3] - b[:, :3, 3], axis=-1) / extent


def test_a_colmap_model_in_another_similarity_frame_recovers_the_true_poses(tmp_path, caplog):
  truth = _conditioning()
  moved = similar_world(np.asarray(truth.c2w, np.float64), 3.7, seed=1)
  # COLMAP ran on the frames at twice the size; its intrinsics are ignored (the conditioning ones are kept).
  write_colmap_text_model(tmp_path / "model", moved, 2 * np.asarray(truth.K), 320, 256, NAMES)
  cameras, record = reconstruction_cameras(f"colmap:{tmp_path / 'model'}", truth)
  rotation, centre = pose_errors(cameras, truth)
  assert rotation.max() < 1e-4 and centre.max() < 1e-4
  assert record["used"] == "colmap" and record["registered"] == 13 and record["filled"] == []
  assert record["scale"] == pytest.approx(1 / 3.7, rel=1e-5) and record["centre_rms"] < 1e-4
  np.testing.assert_array_equal(np.asarray(cameras.K), np.asarray(truth.K))
  assert (cameras.width, cameras.height) == (160, 128)

  # A model whose focal length differs gets a warning (the conditioning intrinsics are still used).
  write_colmap_text_model(tmp_path / "zoomed", moved, 1.5 * np.asarray(truth.K), 160, 128, NAMES)
  with caplog.at_level(logging.WARNING, logger="wonderland_jax"):
    reconstruction_cameras(f"colmap:{tmp_path / 'zoomed'}", truth)
  assert "focal length differs" in caplog.text and "50%" in caplog.text


def test_unregistered_frames_keep_their_conditioning_poses_and_the_first_registered_is_the_anchor(caplog):
  truth = _conditioning()
  moved = similar_world(np.asarray(truth.c2w, np.float64), 0.2, seed=2)
  moved[[0, 5]] = np.nan  # COLMAP registered neither the first frame nor frame 5
  with caplog.at_level(logging.WARNING, logger="wonderland_jax"):
    cameras, record = align_to_conditioning(moved, truth)
  assert record["anchor"] == 1 and record["filled"] == [0, 5] and record["registered"] == 11
  assert "2 of 13 frames not registered (0, 5)" in caplog.text
  rotation, centre = pose_errors(cameras, truth)
  assert rotation.max() < 1e-4 and centre.max() < 1e-4
  np.testing.assert_allclose(np.asarray(cameras.viewmat)[[0, 5]], np.asarray(truth.viewmat)[[0, 5]], atol=1e-6)


def test_a_generated_path_that_strays_keeps_its_shape_and_the_first_camera():
  truth = _conditioning()
  strayed = np.asarray(truth.c2w, np.float64).copy()
  strayed[1:, 1, 3] += 0.3 * np.linspace(0, 1, 12)  # the video drifted down as it went
  cameras, record = align_to_conditioning(similar_world(strayed, 5.0, seed=3), truth)
  np.testing.assert_allclose(np.asarray(cameras.viewmat[0]), np.asarray(truth.viewmat[0]), atol=1e-5)
  relative = np.linalg.inv(strayed[0]) @ strayed
  aligned = np.linalg.inv(np.asarray(cameras.c2w[0], np.float64)) @ np.asarray(cameras.c2w, np.float64)
  np.testing.assert_allclose(aligned[:, :3, :3], relative[:, :3, :3], atol=1e-5)  # its own orientations
  # Scaled so the distances from the first camera fit the conditioning ones in the least-squares sense.
  d_aligned, d_truth = (np.linalg.norm(x[:, :3, 3] - x[:1, :3, 3], axis=-1) for x in (aligned, np.asarray(truth.c2w)))
  assert np.sum(d_aligned * (d_aligned - d_truth)) == pytest.approx(0, abs=1e-5)
  assert record["centre_rms"] > 0.01 and record["rotation_deg"] < 1e-3


def test_paths_without_extent_or_registrations_cannot_be_aligned(tmp_path):
  pan = make_trajectory("pan-left", 9, width=64, height=48)  # a pure rotation: no extent to scale to
  with pytest.raises(AlignmentError, match="conditioning cameras do not move"):
    align_to_conditioning(similar_world(np.asarray(pan.c2w), 2.0), pan)
  truth = _conditioning(9)
  static = np.broadcast_to(np.asarray(truth.c2w[0], np.float64), (9, 4, 4))
  with pytest.raises(AlignmentError, match="estimated cameras do not move"):
    align_to_conditioning(static, truth)
  with pytest.raises(AlignmentError, match="1 of 9 frames registered"):
    align_to_conditioning(np.where(np.arange(9)[:, None, None] == 4, static, np.nan), truth)
  # Through --poses colmap:<dir>, a model of a path without extent is an error naming the model.
  write_colmap_text_model(tmp_path / "pan", np.asarray(pan.c2w), np.asarray(pan.K), 64, 48, NAMES[:9])
  with pytest.raises(InputFileError, match=f"{tmp_path / 'pan'}: the conditioning cameras do not move"):
    reconstruction_cameras(f"colmap:{tmp_path / 'pan'}", pan)


def test_colmap_models_with_another_frame_count_or_missing_are_refused_naming_the_directory(tmp_path):
  truth = _conditioning()
  write_colmap_text_model(tmp_path / "short", np.asarray(truth.c2w)[:12], np.asarray(truth.K)[:12], 160, 128,
                          NAMES[:12])
  source = PoseSource.parse(f"colmap:{tmp_path / 'short'}")
  with pytest.raises(InputFileError, match=f"^{tmp_path / 'short'}: a COLMAP model of 12 images but the video has "
                                           "13 frames") as error:
    source.check(13)
  assert "\n" not in str(error.value)
  source.check()  # readable; the count is checked once the frame count is known
  with pytest.raises(InputFileError, match="missing: no such directory"):
    PoseSource.parse(f"colmap:{tmp_path / 'missing'}").check(13)


def test_pose_source_flag_and_sfm_without_pycolmap(monkeypatch):
  assert PoseSource.parse("conditioning") == PoseSource() and str(PoseSource.parse("sfm")) == "sfm"
  assert PoseSource.parse("colmap:a/b").model_dir.as_posix() == "a/b" and PoseSource.parse("sfm").needs_frames
  for bad in ("colmap:", "colmap", "COLMAP", "sfm2"):
    with pytest.raises(argparse.ArgumentTypeError, match="conditioning, colmap:<model dir> or sfm"):
      pose_source_flag(bad)
  assert pose_source_flag("colmap:x") == "colmap:x"
  assert [min_registered(f) for f in (1, 2, 5, 9, 49)] == [1, 2, 3, 5, 25]
  monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap -> ImportError
  with pytest.raises(WonderlandError, match=r"^--poses sfm needs pycolmap: pip install 'wonderland_jax\[sfm\]'$"):
    PoseSource.parse("sfm").check()
  conditioning = make_trajectory("orbit", 5, width=32, height=32)
  assert reconstruction_cameras("conditioning", conditioning)[0] is conditioning


def _textured_video(num_frames: int, width: int, height: int, seed: int = 0) -> tuple[np.ndarray, Camera]:
  """A synthetic scene (`data.synthetic.random_scene`) with small Gaussians of random colours (texture for SIFT)
  filmed along an orbit with our rasterizer: the frames (F, H, W, 3) in [0, 1] and their true cameras."""
  rng = np.random.default_rng(seed)
  gaussians, background = random_scene(rng, 4000)
  gaussians = gaussians.replace(colors=jnp.asarray(rng.uniform(0, 1, (4000, 3)), jnp.float32),
                                scales=0.35 * gaussians.scales)
  truth = _conditioning(num_frames, width, height, seed)
  frames = rasterize(gaussians, truth, background=jnp.asarray(background)).image
  return np.clip(np.asarray(frames, np.float32), 0, 1), truth


def test_sfm_on_a_rendered_video_recovers_its_poses(caplog):
  pytest.importorskip("pycolmap", reason="needs the sfm extra: pip install 'wonderland_jax[sfm]'")
  frames, truth = _textured_video(13, 256, 192)
  with caplog.at_level(logging.INFO, logger="wonderland_jax"):
    cameras, record = reconstruction_cameras("sfm", truth, frames)
  assert record["used"] == "sfm" and record["registered"] == 13, record
  rotation, centre = pose_errors(cameras, truth)
  # Measured (pycolmap 4.2.1, 256x192, this seed; the same to 1e-6 over reruns): rotation <= 0.0049 rad (0.28
  # degrees), centre <= 0.0073 of the path's extent, growing along the path (SIFT on splats is not exact).
  assert rotation.max() < 0.01 and centre.max() < 0.015, (rotation.max(), centre.max())
  assert "poses from sfm: 13 of 13 frames registered" in caplog.text


def test_sfm_falls_back_to_the_conditioning_cameras_when_nothing_registers(caplog):
  pytest.importorskip("pycolmap", reason="needs the sfm extra: pip install 'wonderland_jax[sfm]'")
  conditioning = _conditioning(9, 96, 64)
  blank = np.full((9, 64, 96, 3), 0.5, np.float32)  # identical featureless frames
  with caplog.at_level(logging.WARNING, logger="wonderland_jax"):
    cameras, record = reconstruction_cameras("sfm", conditioning, blank)
  assert cameras is conditioning
  assert record["requested"] == "sfm" and record["used"] == "conditioning" and "0 of 9 frames registered" in \
      record["fallback"]
  assert "--poses sfm: 0 of 9 frames registered (at least 5 needed); reconstructing from the conditioning" in \
      caplog.text
  with pytest.raises(WonderlandError, match="needs the 9 decoded frames, got none"):
    reconstruction_cameras("sfm", conditioning)
