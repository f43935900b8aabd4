"""Clip sampling: indices, resize / crop with exact intrinsics, pose re-basing and scale normalisation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from tests.helpers.data import HEIGHT, SPEC, WIDTH
from wonderland_jax.camera import normalize_poses
from wonderland_jax.data import ClipSource, ClipSpec, crop_transform, resize_and_crop, sample_indices, scan_dataset
from wonderland_jax.data.pipeline import make_clip_source
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
  for floor in (0.0, -0.1, float("nan")):
    with pytest.raises(WonderlandError, match="scale_floor must be positive"):
      ClipSpec(scale_mode="extent_floor", scale_floor=floor).validate()



def _write_re10k_rotation(root, name: str, baseline: float, num: int = 24, seed: int = 0) -> None:
  """root/poses/<name>.txt, a RealEstate10K pose file of a 60 degree pan whose camera centres stay within
  `baseline` of (2, -1, 5) (0: a pure rotation), and root/frames/<name>/<timestamp>.png."""
  rng = np.random.default_rng(seed)
  yaw = np.deg2rad(np.linspace(0.0, 60.0, num))
  rotations = Rotation.from_euler("y", yaw[:, None]).as_matrix()  # camera -> world
  centres = np.array([2.0, -1.0, 5.0]) + baseline * rng.uniform(-1, 1, size=(num, 3))
  timestamps = np.rint(np.arange(num) * 1e6 / 30).astype(np.int64)
  lines = [f"https://www.youtube.com/watch?v={name}"]
  for timestamp, rotation, centre in zip(timestamps, rotations, centres):
    world_to_camera = np.concatenate([rotation.T, -(rotation.T @ centre)[:, None]], axis=1)
    values = [0.5, 0.75, 0.5, 0.5, 0.0, 0.0, *world_to_camera.reshape(-1)]
    lines.append(" ".join([str(timestamp)] + [f"{value:.9g}" for value in values]))
  (root / "poses").mkdir(parents=True, exist_ok=True)
  (root / "poses" / f"{name}.txt").write_text("\n".join(lines) + "\n")
  frames = root / "frames" / name
  frames.mkdir(parents=True)
  for timestamp in timestamps:
    Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(frames / f"{timestamp}.png")


def _centres(viewmats: np.ndarray) -> np.ndarray:
  return np.linalg.inv(np.asarray(viewmats, np.float64))[:, :3, 3]


def test_extent_floor_on_realestate10k_near_zero_baselines(tmp_path):
  """A RealEstate10K clip that is nearly a pure rotation (1e-4 jitter, or none) through the data path:
  'max_distance' blows its translations up by ~1 / baseline; 'extent_floor' keeps them bounded."""
  root = tmp_path / "re10k"
  _write_re10k_rotation(root, "jitter", 1e-4)
  _write_re10k_rotation(root, "rotation", 0.0, seed=1)
  data = dict(source="scenes", format="realestate10k", root=str(root), num_frames=9, height=HEIGHT, width=WIDTH,
              stride=(1, 2), num_target_seen=2, num_target_unseen=2)
  floored = make_clip_source(data | dict(scale_mode="extent_floor", scale_target=1.0, scale_floor=0.05))
  assert floored.spec.scale_mode == "extent_floor" and floored.spec.scale_floor == 0.05
  scenes = scan_dataset(root, "realestate10k").scenes
  plain = ClipSource(scenes, dataclasses.replace(floored.spec, scale_mode="max_distance"), seed=0)
  names = [scene.name for scene in scenes]
  jitter = names.index("jitter")
  clip = floored.clip(jitter, np.random.default_rng(4))
  blown = plain.clip(jitter, np.random.default_rng(4))
  np.testing.assert_array_equal(clip["frame_indices"], blown["frame_indices"])
  raw = scenes[jitter].load().viewmats[clip["frame_indices"]]
  extent = np.linalg.norm(_centres(raw) - _centres(raw)[0], axis=-1).max()
  assert 1e-5 < extent < 2e-4
  # extent_floor: scale target / floor exactly, every camera (targets too) within 20 x 2e-4 of the first.
  assert clip["pose_scale"] == np.float32(1.0 / 0.05)
  for key in ("viewmats", "target_viewmats"):
    assert np.all(np.isfinite(clip[key]))
    assert np.abs(_centres(clip[key])).max() < 20 * 4e-4
  # max_distance: the same clip blown up to distance 1, a factor ~1 / baseline.
  assert blown["pose_scale"] == pytest.approx(1.0 / extent, rel=1e-4) and blown["pose_scale"] > 5e3
  assert np.linalg.norm(_centres(blown["viewmats"]), axis=-1).max() == pytest.approx(1.0, rel=1e-4)
  # Same rotations; translations in the ratio of the scales.
  np.testing.assert_allclose(clip["viewmats"][:, :3, :3], blown["viewmats"][:, :3, :3], atol=1e-6)
  np.testing.assert_allclose(_centres(clip["viewmats"]) * blown["pose_scale"] / clip["pose_scale"],
                             _centres(blown["viewmats"]), atol=1e-3)
  # A pure rotation (the file's 9 digits leave ~1e-9 of round-off in the centres): bounded, scale target / floor.
  rotation = floored.clip(names.index("rotation"), np.random.default_rng(4))
  assert rotation["pose_scale"] == np.float32(20.0)
  assert np.abs(_centres(rotation["target_viewmats"])).max() < 1e-5
  # max_distance treats that round-off (above its 1e-9 tolerance) as motion and scales it to distance 1.
  assert plain.clip(names.index("rotation"), np.random.default_rng(4))["pose_scale"] > 1e5
