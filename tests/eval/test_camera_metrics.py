"""RotErr / TransErr: invariance to the estimate's world frame and scale, known errors, COLMAP models in."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.helpers.poses import colmap_images_txt
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.eval.camera_metrics import camera_errors, colmap_trajectory


def _trajectory(num_frames: int, seed: int) -> np.ndarray:
  """(F, 4, 4) world->camera of a random smooth path."""
  rng = np.random.default_rng(seed)
  rotations = Rotation.from_rotvec(np.cumsum(rng.normal(scale=0.05, size=(num_frames, 3)), 0)).as_matrix()
  centres = np.cumsum(rng.normal(scale=0.3, size=(num_frames, 3)), 0)
  c2w = np.tile(np.eye(4), (num_frames, 1, 1))
  c2w[:, :3, :3], c2w[:, :3, 3] = rotations, centres
  return np.linalg.inv(c2w)


def _similarity(viewmats: np.ndarray, seed: int, scale: float) -> np.ndarray:
  """The same cameras in another world frame and units: x_world' = scale * (R x_world + t)."""
  rng = np.random.default_rng(seed)
  transform = np.eye(4)
  transform[:3, :3], transform[:3, 3] = Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3)
  c2w = transform @ np.linalg.inv(viewmats)
  c2w[:, :3, 3] *= scale
  return np.linalg.inv(c2w)


def test_zero_for_the_same_path_in_another_frame_and_scale():
  reference = _trajectory(20, 0)
  errors = camera_errors(_similarity(reference, 1, 7.5), reference)
  assert errors.rotation == pytest.approx(0.0, abs=1e-6)
  assert errors.translation == pytest.approx(0.0, abs=1e-9)
  assert errors.frames == tuple(range(16))


def test_known_rotation_and_translation_errors():
  reference = np.tile(np.eye(4), (3, 1, 1))
  reference[1, 0, 3], reference[2, 0, 3] = -1.0, -2.0  # centres at x = 1, 2 (max distance 2 -> 1 after scaling)
  estimated = reference.copy()
  angle = 0.3
  estimated[2, :3, :3] = Rotation.from_rotvec([0, angle, 0]).as_matrix()
  estimated[2, :3, 3] = -estimated[2, :3, :3] @ np.array([2.0, 0.0, 0.0])  # same centre, rotated camera
  estimated[1, :3, 3] = -np.array([1.0, 1.0, 0.0])  # centre (1, 1, 0): 0.5 normalised units from (0.5, 0, 0)
  errors = camera_errors(estimated, reference, num_frames=3)
  np.testing.assert_allclose(errors.per_frame_rotation, [0.0, 0.0, angle], atol=1e-7)
  # Normalisation: estimated centres (0,0,0), (1,1,0), (2,0,0) have max distance 2, like the reference's.
  np.testing.assert_allclose(errors.per_frame_translation, [0.0, 0.5, 0.0], atol=1e-9)
  assert errors.rotation == pytest.approx(angle / 3)
  assert errors.translation == pytest.approx(0.5 / 3)


def test_unregistered_frames_are_left_out_and_frame_zero_is_needed():
  reference = _trajectory(10, 2)
  estimated = _similarity(reference, 3, 0.2)
  estimated[[4, 7]] = np.nan
  errors = camera_errors(estimated, reference, num_frames=10)
  assert errors.frames == (0, 1, 2, 3, 5, 6, 8, 9)
  assert errors.translation == pytest.approx(0.0, abs=1e-9)
  estimated[0] = np.nan
  with pytest.raises(WonderlandError, match="first frame has no estimated pose"):
    camera_errors(estimated, reference)
  with pytest.raises(WonderlandError, match=r"\(F, 4, 4\)"):
    camera_errors(estimated[:, :3], reference)


def test_colmap_trajectory_matches_frames_by_number(tmp_path):
  reference = _trajectory(6, 4)
  estimated = _similarity(reference, 5, 3.0)
  registered = [0, 1, 3, 5]  # COLMAP left out frames 2 and 4
  quaternions = Rotation.from_matrix(estimated[registered, :3, :3]).as_quat()[:, [3, 0, 1, 2]]
  text = colmap_images_txt(quaternions[:3], estimated[registered[:3], :3, 3])
  text = text.replace("frame_b.jpg", "frame_00000.png").replace("frame_c.jpg", "frame_00001.png")
  text = text.replace("frame_a.jpg", "frame_00003.png").replace(" 2 frame_00003", " 1 frame_00003")
  q, t = quaternions[3], estimated[5, :3, 3]
  text += f"4 {' '.join(map(repr, q.tolist()))} {' '.join(map(repr, t.tolist()))} 1 frame_00005.png\n\n"
  (tmp_path / "cameras.txt").write_text("1 PINHOLE 64 48 50.0 50.0 32.0 24.0\n")
  (tmp_path / "images.txt").write_text(text)
  viewmats = colmap_trajectory(tmp_path, 6)
  assert np.isnan(viewmats[[2, 4]]).all() and np.isfinite(viewmats[registered]).all()
  np.testing.assert_allclose(viewmats[registered], estimated[registered], atol=1e-5)
  errors = camera_errors(viewmats, reference, num_frames=6)
  assert errors.frames == (0, 1, 3, 5)
  assert errors.rotation < 1e-3 and errors.translation < 1e-4  # float32 cameras in between
  (tmp_path / "images.txt").write_text(text.replace("frame_00005.png", "frame_00003.png"))
  with pytest.raises(InputFileError, match="both have frame number 3"):
    colmap_trajectory(tmp_path, 6)
