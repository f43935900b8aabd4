"""Clip sampling: indices, resize / crop with exact intrinsics, pose re-basing and scale normalisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.helpers.data import HEIGHT, SPEC, WIDTH
from wonderland_jax.camera import normalize_poses
from wonderland_jax.data import ClipSource, ClipSpec, crop_transform, resize_and_crop, sample_indices, scan_dataset
from wonderland_jax.errors import InputFileError, WonderlandError


def _random_viewmats(rng, num: int) -> np.ndarray:
  viewmats = np.tile(np.eye(4), (num, 1, 1))
  viewmats[:, :3, :3] = Rotation.random(num, random_state=rng.integers(1 << 31)).as_matrix()
  viewmats[:, :3, 3] = rng.normal(size=(num, 3))
  return viewmats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_indices(seed):
  spec = dataclasses.replace(SPEC, num_target_seen=3, num_target_unseen=5, outside_margin=0.25)
  rng = np.random.default_rng(seed)
  indices = sample_indices(100, spec, rng, (2, 4))
  frames, targets, seen = indices.frame_indices, indices.target_indices, indices.target_is_seen
  assert frames.shape == (9,) and targets.shape == (8,) and indices.target_slots.shape == (8,)
  assert 2 <= indices.stride <= 4 and np.all(np.diff(frames) == indices.stride) and frames[-1] < 100
  np.testing.assert_array_equal(seen, [True] * 3 + [False] * 5)
  assert set(targets[:3]) <= set(frames) and not set(targets[3:]) & set(frames)
  span = frames[-1] - frames[0]
  margin = round(0.25 * span)
  assert np.all((targets[3:] >= frames[0] - margin) & (targets[3:] <= frames[-1] + margin))
  load = indices.load_order
  np.testing.assert_array_equal(load[indices.target_slots], targets)
  again = sample_indices(100, spec, np.random.default_rng(seed), (2, 4))
  np.testing.assert_array_equal(again.target_indices, targets)


def test_sample_indices_short_scenes():
  rng = np.random.default_rng(0)
  indices = sample_indices(17, SPEC, rng, (3, 5))  # only stride 2 fits 9 frames in 17
  assert indices.stride == 2 and indices.frame_indices.tolist() == list(range(0, 17, 2))
  whole = sample_indices(9, SPEC, rng, (1, 1))  # no frame outside the clip: unseen targets fall back to seen
  assert whole.target_is_seen.all() and set(whole.target_indices) <= set(range(9))
  with pytest.raises(InputFileError, match="scene.txt: 8 frames, too few for a clip of 9"):
    sample_indices(8, SPEC, rng, (1, 1), where="scene.txt")


def _blob(size, center, sigma=1.5):
  """(H, W, 3) image of a Gaussian dot at pixel position `center` (x, y), pixel centres at +0.5."""
  ys, xs = np.mgrid[:size[0], :size[1]] + 0.5
  dot = np.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma ** 2))
  return np.repeat(dot[..., None], 3, -1).astype(np.float32)


def _centroid(image):
  ys, xs = np.mgrid[:image.shape[0], :image.shape[1]] + 0.5
  weights = image[..., 0] / image[..., 0].sum()
  return np.array([(weights * xs).sum(), (weights * ys).sum()])


def _project(K, point):
  uvw = K @ point
  return uvw[:2] / uvw[2]


@pytest.mark.parametrize("source_size", [(60, 100), (40, 40), (20, 30), (32, 48)])
def test_resize_and_crop_intrinsics(source_size):
  rng = np.random.default_rng(sum(source_size))
  K = np.array([[0.9 * source_size[1], 0, 0.52 * source_size[1]], [0, 0.85 * source_size[1], 0.47 * source_size[0]],
                [0, 0, 1.0]])
  transform, resized, (top, left) = crop_transform(source_size, (HEIGHT, WIDTH))
  scale_x, scale_y = resized[1] / source_size[1], resized[0] / source_size[0]
  assert abs(scale_x / scale_y - 1) < 0.05  # aspect kept up to rounding
  # A point that lands in the middle of the crop, in camera coordinates; a dot there 1.5 output pixels wide.
  pixel = (np.array([WIDTH, HEIGHT]) * rng.uniform(0.4, 0.6, 2) + [left, top]) / [scale_x, scale_y]
  point = np.linalg.inv(K) @ np.array([*pixel, 1.0]) * rng.uniform(1, 5)
  image = _blob(source_size, _project(K, point), 1.5 / scale_x)
  out, K_out = resize_and_crop(image[None], K[None], HEIGHT, WIDTH)
  assert out.shape == (1, HEIGHT, WIDTH, 3) and out.dtype == np.float32
  np.testing.assert_allclose(K_out[0], transform @ K)
  np.testing.assert_allclose(_project(K_out[0], point), _project(K, point) * [scale_x, scale_y] - [left, top])
  # The dot lands where the new intrinsics project the point.
  np.testing.assert_allclose(_centroid(out[0]), _project(K_out[0], point), atol=0.02)  # a +0.5 slip: > 0.2


def test_normalize_poses():
  rng = np.random.default_rng(0)
  viewmats = _random_viewmats(rng, 7)
  normalized, scale = normalize_poses(viewmats, num_reference=5)
  np.testing.assert_array_equal(normalized[0], np.eye(4))
  c2w = np.linalg.inv(normalized)
  assert np.isclose(np.linalg.norm(c2w[:5, :3, 3], axis=-1).max(), 1.0)
  # Invariant to a similarity transform of the world x -> s R x + t (cameras rotate and move with it).
  rotation, world_scale = Rotation.random(random_state=1).as_matrix(), 3.7
  moved = np.linalg.inv(viewmats)
  moved[:, :3, :3] = rotation @ moved[:, :3, :3]
  moved[:, :3, 3] = world_scale * moved[:, :3, 3] @ rotation.T + [5.0, -2.0, 1.0]
  normalized_moved, scale_moved = normalize_poses(np.linalg.inv(moved), num_reference=5)
  np.testing.assert_allclose(normalized_moved, normalized, atol=1e-9)
  assert np.isclose(scale_moved * world_scale, scale)
  assert normalize_poses(viewmats, 5, mode="none")[1] == 1.0
  path = np.linalg.inv(normalize_poses(viewmats, 5, mode="path_length", target=2.0)[0])[:5, :3, 3]
  assert np.isclose(np.linalg.norm(np.diff(path, axis=0), axis=-1).sum(), 2.0)
  static = np.tile(viewmats[:1], (3, 1, 1))
  assert normalize_poses(static, 3)[1] == 1.0


def test_clip_from_disk(re10k_root):
  scenes = scan_dataset(re10k_root, "realestate10k").scenes
  source = ClipSource(scenes, SPEC, seed=3)
  clip = source[1]
  F, V = SPEC.num_frames, SPEC.num_targets
  shapes = {"frames": (F, HEIGHT, WIDTH, 3), "viewmats": (F, 4, 4), "intrinsics": (F, 3, 3),
            "target_images": (V, HEIGHT, WIDTH, 3), "target_viewmats": (V, 4, 4), "target_intrinsics": (V, 3, 3),
            "target_is_seen": (V,), "frame_indices": (F,), "target_indices": (V,), "pose_scale": (),
            "scene_index": ()}
  assert {key: value.shape for key, value in clip.items()} == shapes
  assert clip["frames"].dtype == np.float32 and 0 <= clip["frames"].min() and clip["frames"].max() <= 1
  np.testing.assert_array_equal(clip["viewmats"][0], np.eye(4))
  # Seen targets are copies of their clip frames, with the same cameras.
  for target, source_index in enumerate(clip["target_indices"][:2]):
    position = list(clip["frame_indices"]).index(source_index)
    np.testing.assert_array_equal(clip["target_images"][target], clip["frames"][position])
    np.testing.assert_array_equal(clip["target_viewmats"][target], clip["viewmats"][position])
  # Relative poses are the scene's, translations scaled by pose_scale.
  scene = scenes[1].load()
  c2w = np.linalg.inv(scene.viewmats[clip["target_indices"]])
  relative = np.linalg.inv(np.linalg.inv(scene.viewmats[clip["frame_indices"][0]])) @ c2w
  ours = np.linalg.inv(clip["target_viewmats"].astype(np.float64))
  np.testing.assert_allclose(ours[:, :3, :3], relative[:, :3, :3], atol=1e-5)
  np.testing.assert_allclose(ours[:, :3, 3], clip["pose_scale"] * relative[:, :3, 3], atol=1e-5)
  assert 1 <= np.diff(clip["frame_indices"])[0] <= 2
  for key, value in source[1].items():  # deterministic given (seed, index)
    np.testing.assert_array_equal(value, clip[key])


def test_clip_spec_validation():
  with pytest.raises(WonderlandError, match="num_target_seen must be in"):
    ClipSpec(num_frames=9, num_target_seen=10).validate()
  with pytest.raises(WonderlandError, match="stride must be"):
    ClipSpec(stride=(3, 2)).validate()
  with pytest.raises(WonderlandError, match="scale_mode must be one of"):
    ClipSpec(scale_mode="bbox").validate()
