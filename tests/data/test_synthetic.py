"""The procedural dataset: determinism per index, exact ground truth, the RealEstate10K writer."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.data import HEIGHT, SPEC, WIDTH
from wonderland_jax.data import SyntheticDataset, random_camera_path, random_scene, write_synthetic_dataset
from wonderland_jax.errors import InputFileError, WonderlandError


def test_deterministic_per_index():
  dataset = SyntheticDataset(SPEC, num_scenes=8, seed=5)
  first, again, other = dataset[3], SyntheticDataset(SPEC, num_scenes=8, seed=5)[3], dataset[4]
  assert first.keys() == again.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], again[key], err_msg=key)
  assert not np.array_equal(first["frames"], other["frames"])
  assert not np.array_equal(first["frames"], SyntheticDataset(SPEC, num_scenes=8, seed=6)[3]["frames"])
  assert int(first["scene_index"]) == 3
  assert first["frames"].shape == (9, HEIGHT, WIDTH, 3) and first["target_images"].shape == (4, HEIGHT, WIDTH, 3)
  assert 0.05 < first["frames"].std() and 0 <= first["frames"].min() and first["frames"].max() <= 1


def test_ground_truth_is_exact():
  """Every target is the rendering of the scene at the target's source camera, whatever its slot."""
  dataset = SyntheticDataset(SPEC, num_scenes=4, seed=1)
  clip = dataset[2]
  scene = dataset.scene(2)
  load = np.concatenate([clip["frame_indices"], clip["target_indices"][2:]])  # the clip's render batch
  rendered = scene.load_frames(load)
  np.testing.assert_array_equal(clip["frames"], rendered[:9])
  np.testing.assert_array_equal(clip["target_images"][2:], rendered[9:])
  np.testing.assert_allclose(clip["intrinsics"], np.broadcast_to(scene.intrinsics[0], (9, 3, 3)), rtol=1e-6)
  np.testing.assert_array_equal(clip["viewmats"][0], np.eye(4))
  assert not clip["target_is_seen"][2:].any()


def test_scene_and_path():
  gaussians, background = random_scene(np.random.default_rng(0), 100)
  assert gaussians.validate().num == 100 and background.shape == (3,)
  c2w = random_camera_path(np.random.default_rng(0), 20)
  assert c2w.shape == (20, 4, 4)
  np.testing.assert_allclose(c2w[:, :3, :3] @ np.swapaxes(c2w[:, :3, :3], 1, 2), np.tile(np.eye(3), (20, 1, 1)),
                             atol=1e-12)
  to_origin = -c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True)
  assert np.all(np.einsum("ni,ni->n", to_origin, c2w[:, :3, 2]) > 0.9)  # looking at the scene
  steps = np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)
  assert steps.max() < 3 * steps.mean()  # smooth: no jumps
  with pytest.raises(WonderlandError, match="num_gaussians must be >= 16"):
    random_scene(np.random.default_rng(0), 8)


def test_write_refuses_non_empty(tmp_path):
  (tmp_path / "keep.txt").write_text("x")
  with pytest.raises(InputFileError, match="exists and is not an empty folder"):
    write_synthetic_dataset(tmp_path, 1)
  with pytest.raises(WonderlandError, match=r"num_source_frames \(4\) must be >="):
    SyntheticDataset(SPEC, num_source_frames=4)
