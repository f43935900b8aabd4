"""The procedural dataset: determinism per index, exact ground truth, the RealEstate10K writer."""

from __future__ import annotations

import dataclasses

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


def _in_first_frame(c2w):
  return np.linalg.inv(c2w[0]) @ c2w


@pytest.mark.parametrize("family", ["orbit", "truck", "pan", "dolly", "rise", "orbit+rise", "pan+dolly"])
def test_path_families_go_either_way_and_mirror(family):
  """Each family goes both ways over seeds (the first frame does not tell the direction); mirroring reverses
  the sideways ones and leaves the symmetric ones (dolly, rise) as they are."""
  from wonderland_jax.camera import mirror_left_right  # noqa: PLC0415
  from wonderland_jax.data import family_camera_path  # noqa: PLC0415
  sideways, forward, vertical, yaws = [], [], [], []
  for seed in range(12):
    path = family_camera_path(np.random.default_rng(seed), 17, family)
    local = _in_first_frame(path)
    np.testing.assert_allclose(local[0], np.eye(4), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(local[:, :3, :3]), 1.0, atol=1e-9)
    sideways.append(local[-1, 0, 3])
    forward.append(local[-1, 2, 3])
    vertical.append(local[-1, 1, 3])
    yaws.append(local[-1, 0, 2])  # x component of the last camera's viewing direction
    mirrored = _in_first_frame(mirror_left_right(path))
    np.testing.assert_allclose(mirrored[0], np.eye(4), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(mirrored[:, :3, :3]), 1.0, atol=1e-9)
    np.testing.assert_allclose(mirrored[:, 0, 3], -local[:, 0, 3], atol=1e-9)
    np.testing.assert_allclose(mirrored[:, 1:3, 3], local[:, 1:3, 3], atol=1e-9)
    np.testing.assert_allclose(mirror_left_right(mirror_left_right(path)), path, atol=1e-9)
    if family in ("dolly", "rise"):  # symmetric: its own mirror image
      np.testing.assert_allclose(mirrored, local, atol=1e-6)
  lateral = {"orbit": sideways, "truck": sideways, "pan": yaws, "orbit+rise": sideways, "pan+dolly": yaws,
             "dolly": forward, "rise": vertical}[family]
  lateral = np.asarray(lateral)
  assert (lateral > 0.05).any() and (lateral < -0.05).any(), lateral
  if family in ("orbit", "truck", "pan"):
    assert (np.abs(lateral) > 0.05).all(), lateral  # it always moves


def test_family_paths_in_the_dataset():
  spec = dataclasses.replace(SPEC, num_target_unseen=0)
  arcs = SyntheticDataset(spec, num_scenes=2, seed=3)
  families = SyntheticDataset(spec, num_scenes=2, seed=3, camera_paths="families")
  assert not np.allclose(arcs.scene(1).viewmats, families.scene(1).viewmats)
  np.testing.assert_array_equal(families[1]["frames"], SyntheticDataset(spec, num_scenes=2, seed=3,
                                                                       camera_paths="families")[1]["frames"])
  with pytest.raises(WonderlandError, match="camera_paths"):
    SyntheticDataset(spec, camera_paths="spiral")
  with pytest.raises(WonderlandError, match="unknown motion 'zoom'"):
    from wonderland_jax.data import family_camera_path  # noqa: PLC0415
    family_camera_path(np.random.default_rng(0), 9, "orbit+zoom")
