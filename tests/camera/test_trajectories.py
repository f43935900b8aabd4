"""Tests for trajectory presets, look_at, rebasing and scale normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from wonderland_jax.camera import (
  PRESETS,
  Camera,
  conditioning_rays,
  dolly,
  look_at,
  make_trajectory,
  normalize_poses,
  normalize_trajectory_scale,
  orbit,
  pan,
  rebase_to_first,
  renormalization,
  spiral,
  zoom_out,
)
from wonderland_jax.errors import WonderlandError

K_EXAMPLE = np.array([[50.0, 0.0, 31.0], [0.0, 55.0, 17.0], [0.0, 0.0, 1.0]])
OPTIONS = dict(K=K_EXAMPLE, width=64, height=36)


def random_pose(seed: int) -> np.ndarray:
  pose = np.eye(4)
  pose[:3, :3] = Rotation.random(random_state=seed).as_matrix()
  pose[:3, 3] = np.random.default_rng(seed).normal(size=3)
  return pose


START = random_pose(0)


def c2w_of(cameras) -> np.ndarray:
  return np.asarray(cameras.c2w, np.float64)


def project(cameras, point: np.ndarray) -> np.ndarray:
  """(F, 2) pixel coordinates of one world point in every camera."""
  in_camera = np.einsum("fij,j->fi", np.asarray(cameras.viewmat, np.float64), np.append(point, 1.0))[:, :3]
  pixels = np.einsum("fij,fj->fi", np.asarray(cameras.K, np.float64), in_camera)
  return pixels[:, :2] / pixels[:, 2:]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.rad2deg(np.arccos(np.clip(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_starts_at_the_start_pose(name):
  cameras = make_trajectory(name, 7, start_c2w=START, **OPTIONS)
  assert cameras.batch_shape == (7,)
  assert (cameras.width, cameras.height) == (64, 36)
  np.testing.assert_allclose(c2w_of(cameras)[0], START, atol=1e-5)
  np.testing.assert_allclose(cameras.K, np.broadcast_to(K_EXAMPLE, (7, 3, 3)), rtol=1e-6)
  single = make_trajectory(name, 1, start_c2w=START, **OPTIONS)
  np.testing.assert_allclose(c2w_of(single)[0], START, atol=1e-5)


def test_default_intrinsics_and_fov():
  cameras = dolly(3)
  assert (cameras.width, cameras.height) == (1024, 576)
  np.testing.assert_allclose(cameras.K[0, 0, 0], 512.0 / np.tan(np.deg2rad(30.0)), rtol=1e-6)
  np.testing.assert_allclose(c2w_of(cameras)[0], np.eye(4), atol=1e-7)
  cameras = dolly(3, fov_deg=90.0, width=100, height=50)
  np.testing.assert_allclose(cameras.K[0], [[50.0, 0, 50.0], [0, 50.0, 25.0], [0, 0, 1]], rtol=1e-6)
  with pytest.raises(WonderlandError, match="either K or fov_deg"):
    dolly(3, K=K_EXAMPLE, fov_deg=50.0)


def test_orbit_keeps_looking_at_target_at_constant_distance():
  cameras = orbit(9, radius=2.5, degrees=90.0, start_c2w=START, **OPTIONS)
  c2w = c2w_of(cameras)
  target = START[:3, 3] + 2.5 * START[:3, 2]
  np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3] - target, axis=-1), 2.5, atol=1e-5)
  np.testing.assert_allclose(project(cameras, target), np.tile([31.0, 17.0], (9, 1)), atol=1e-3)
  assert angle_deg(c2w[0, :3, 2], c2w[-1, :3, 2]) == pytest.approx(90.0, abs=1e-3)
  # Rotation about the start camera's vertical axis: its y axis is kept; positive degrees go right.
  np.testing.assert_allclose(c2w[:, :3, 1], np.tile(START[:3, 1], (9, 1)), atol=1e-5)
  assert np.dot(c2w[1, :3, 3] - START[:3, 3], START[:3, 0]) > 0


@pytest.mark.parametrize("degrees", [360.0, -360.0])
def test_full_turn_orbit_and_pan_do_not_repeat_the_first_frame(degrees):
  num = 8
  cameras = orbit(num, radius=2.5, degrees=degrees, start_c2w=START, **OPTIONS)
  c2w = c2w_of(cameras)
  np.testing.assert_allclose(c2w[0], START, atol=1e-5)
  target = START[:3, 3] + 2.5 * START[:3, 2]
  np.testing.assert_allclose(project(cameras, target), np.tile([31.0, 17.0], (num, 1)), atol=1e-3)
  # Evenly spaced around the whole circle, the step from the last frame back to the first included: looping
  # the video shows every pose once.
  offsets = c2w[:, :3, 3] - target
  steps = [angle_deg(offsets[i], offsets[(i + 1) % num]) for i in range(num)]
  np.testing.assert_allclose(steps, 360.0 / num, atol=1e-3)
  distances = np.linalg.norm(c2w[:, None, :3, 3] - c2w[None, :, :3, 3], axis=-1)
  assert distances[~np.eye(num, dtype=bool)].min() > 0.5, "all frames distinct"
  assert np.dot(c2w[1, :3, 3] - START[:3, 3], START[:3, 0]) * degrees > 0  # the sign still picks the side
  for direction in ("left", "right"):
    views = c2w_of(pan(num, degrees=abs(degrees), direction=direction, start_c2w=START, **OPTIONS))[:, :3, 2]
    steps = [angle_deg(views[i], views[(i + 1) % num]) for i in range(num)]
    np.testing.assert_allclose(steps, 360.0 / num, atol=1e-3)
  # A partial turn still ends on its end pose; a single frame is the start pose.
  almost = c2w_of(orbit(5, degrees=359.0))
  assert angle_deg(almost[0, :3, 2], almost[-1, :3, 2]) == pytest.approx(1.0, abs=1e-3)
  np.testing.assert_allclose(c2w_of(orbit(1, degrees=degrees, start_c2w=START))[0], START, atol=1e-5)


def test_dolly_and_zoom_out_translate_along_the_viewing_axis():
  for preset, sign in ((dolly, 1.0), (zoom_out, -1.0)):
    c2w = c2w_of(preset(5, distance=1.5, start_c2w=START, **OPTIONS))
    expected = START[:3, 3] + sign * np.linspace(0, 1.5, 5)[:, None] * START[:3, 2]
    np.testing.assert_allclose(c2w[:, :3, 3], expected, atol=1e-5)
    np.testing.assert_allclose(c2w[:, :3, :3], np.tile(START[:3, :3], (5, 1, 1)), atol=1e-6)


@pytest.mark.parametrize("direction, sign", [("left", -1.0), ("right", 1.0)])
def test_pan_rotates_in_place(direction, sign):
  c2w = c2w_of(pan(6, degrees=40.0, direction=direction, start_c2w=START, **OPTIONS))
  np.testing.assert_allclose(c2w[:, :3, 3], np.tile(START[:3, 3], (6, 1)), atol=1e-6)
  assert angle_deg(START[:3, 2], c2w[-1, :3, 2]) == pytest.approx(40.0, abs=1e-3)
  assert angle_deg(START[:3, 2], c2w[1, :3, 2]) == pytest.approx(8.0, abs=1e-3)
  np.testing.assert_allclose(c2w[:, :3, 1], np.tile(START[:3, 1], (6, 1)), atol=1e-5)
  assert sign * np.dot(c2w[-1, :3, 2], START[:3, 0]) > 0.5
  from_registry = make_trajectory(f"pan-{direction}", 6, degrees=40.0, start_c2w=START, **OPTIONS)
  np.testing.assert_allclose(c2w_of(from_registry), c2w, atol=1e-6)


def test_spiral_circles_an_axis_and_looks_at_the_focus_point():
  radius, focus_distance = 0.3, 2.0
  circle = c2w_of(spiral(9, radius=radius, num_rotations=1.0, distance=0.0, focus_distance=focus_distance))
  np.testing.assert_allclose(circle[-1], circle[0], atol=1e-5)  # one full turn closes the loop
  centre = circle[:-1, :3, 3].mean(0)
  np.testing.assert_allclose(np.linalg.norm(circle[:, :3, 3] - centre, axis=-1), radius, atol=1e-5)
  # The start camera looks at the focus point, at distance sqrt(r^2 + f^2) along its +z.
  focus = np.hypot(radius, focus_distance) * np.array([0.0, 0.0, 1.0])
  cameras = spiral(9, radius=radius, distance=0.0, focus_distance=focus_distance, **OPTIONS)
  np.testing.assert_allclose(project(cameras, focus), np.tile([31.0, 17.0], (9, 1)), atol=1e-3)
  # With forward motion the camera advances `distance` along the axis (from the circle's centre to focus).
  advancing = c2w_of(spiral(9, radius=radius, num_rotations=1.0, distance=1.2, focus_distance=focus_distance))
  axis = (focus - centre) / np.linalg.norm(focus - centre)
  np.testing.assert_allclose(advancing[-1, :3, 3] - advancing[0, :3, 3], 1.2 * axis, atol=1e-5)


def test_make_trajectory_errors():
  with pytest.raises(WonderlandError) as error:
    make_trajectory("fly-through", 5)
  for name in ("orbit", "dolly", "zoom-out", "pan-left", "pan-right", "spiral"):
    assert name in str(error.value)
  with pytest.raises(WonderlandError, match="radius"):
    make_trajectory("dolly", 5, radius=2.0)
  with pytest.raises(WonderlandError, match="num_frames"):
    make_trajectory("dolly", 0)


def test_make_trajectory_forwards_parameters():
  np.testing.assert_allclose(c2w_of(make_trajectory("orbit", 4, radius=3.0, degrees=30.0)),
                             c2w_of(orbit(4, radius=3.0, degrees=30.0)))


def test_look_at_opencv_axes():
  c2w = look_at([1.0, 2.0, 3.0], [1.0, 2.0, 10.0])  # default up (0, -1, 0): an OpenCV-like world
  expected = np.eye(4)
  expected[:3, 3] = [1.0, 2.0, 3.0]
  np.testing.assert_allclose(c2w, expected)
  c2w = look_at([0.0, -5.0, 0.0], [0.0, 0.0, 0.0], up=[0.0, 0.0, 1.0])  # z-up world, looking along +y
  np.testing.assert_allclose(c2w[:3, 2], [0, 1, 0], atol=1e-12)
  np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)  # image down is world down
  np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-12)
  assert np.linalg.det(c2w[:3, :3]) == pytest.approx(1.0)
  with pytest.raises(WonderlandError, match="parallel"):
    look_at([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], up=[0.0, 0.0, 1.0])


def random_trajectory(num: int, seed: int) -> np.ndarray:
  return np.stack([random_pose(seed * 100 + index) for index in range(num)])


def test_rebase_to_first():
  c2w = random_trajectory(5, seed=1)
  rebased = rebase_to_first(c2w)
  np.testing.assert_allclose(rebased[0], np.eye(4), atol=1e-12)
  relative = np.linalg.inv(c2w[2]) @ c2w[4]
  np.testing.assert_allclose(np.linalg.inv(rebased[2]) @ rebased[4], relative, atol=1e-12)


def test_normalize_max_distance():
  c2w = random_trajectory(6, seed=2)
  normalized = normalize_trajectory_scale(c2w, target=2.0)
  positions = normalized[:, :3, 3]
  assert np.max(np.linalg.norm(positions - positions[0], axis=-1)) == pytest.approx(2.0)
  np.testing.assert_allclose(normalized[:, :3, :3], c2w[:, :3, :3])
  # The scale is measured relative to camera 0 but applied to the world: relative poses scale uniformly.
  ratio = np.linalg.norm(positions[3] - positions[1]) / np.linalg.norm(c2w[3, :3, 3] - c2w[1, :3, 3])
  assert ratio == pytest.approx(2.0 / np.max(np.linalg.norm(c2w[:, :3, 3] - c2w[0, :3, 3], axis=-1)))


def test_normalize_path_length_and_float32():
  c2w = random_trajectory(6, seed=3).astype(np.float32)
  normalized = normalize_trajectory_scale(c2w, target=1.0, mode="path_length")
  assert normalized.dtype == np.float32
  steps = np.linalg.norm(np.diff(normalized[:, :3, 3], axis=0), axis=-1)
  assert steps.sum() == pytest.approx(1.0, rel=1e-5)
  with pytest.raises(WonderlandError, match="max_distance"):
    normalize_trajectory_scale(c2w, mode="median")


@pytest.mark.parametrize("mode", ["max_distance", "path_length"])
def test_normalize_is_scale_invariant(mode):
  c2w = random_trajectory(5, seed=4)
  scaled = c2w.copy()
  scaled[:, :3, 3] *= 37.5
  np.testing.assert_allclose(normalize_trajectory_scale(scaled, mode=mode),
                             normalize_trajectory_scale(c2w, mode=mode), atol=1e-12)


def test_normalize_degenerate_trajectory_unchanged():
  c2w = pan(4, degrees=30.0, start_c2w=START, **OPTIONS).c2w  # all cameras at one place
  c2w = np.asarray(c2w)
  for mode in ("max_distance", "path_length"):
    normalized = normalize_trajectory_scale(c2w, mode=mode)
    assert np.all(np.isfinite(normalized))
    np.testing.assert_array_equal(normalized, c2w)


def _jittered_rotation(num: int, baseline: float, seed: int = 0) -> np.ndarray:
  """(num, 4, 4) float64 viewmats: a 40 degree pan from START whose camera centres wander `baseline` (0: a pure
  rotation, exact in float64)."""
  c2w = np.tile(START, (num, 1, 1))
  c2w[:, :3, :3] = START[:3, :3] @ Rotation.from_euler("y", np.linspace(0, 40, num)[:, None], degrees=True).as_matrix()
  c2w[1:, :3, 3] += baseline * np.random.default_rng(seed).uniform(-1, 1, size=(num - 1, 3))
  return np.linalg.inv(c2w)


def _extent(viewmats: np.ndarray) -> float:
  centres = np.linalg.inv(viewmats)[:, :3, 3]
  return float(np.linalg.norm(centres - centres[0], axis=-1).max())


@pytest.mark.parametrize("baseline", [0.0, 1e-12, 1e-4, 0.01])
def test_extent_floor_bounds_the_scale_of_near_pure_rotations(baseline):
  viewmats = _jittered_rotation(7, baseline)
  floor, target = 0.05, 2.0
  normalized, scale = normalize_poses(viewmats, None, "extent_floor", target, floor)
  assert scale == target / floor  # exactly, finite, not ~target / baseline
  assert np.all(np.isfinite(normalized))
  np.testing.assert_allclose(_extent(normalized), target / floor * _extent(viewmats), rtol=1e-6, atol=1e-12)
  assert _extent(normalized) < target
  np.testing.assert_allclose(normalized[:, :3, :3], normalize_poses(viewmats, None, "none")[0][:, :3, :3],
                             atol=1e-12)  # rotations untouched
  # max_distance: unscaled at zero size (below float64 round-off), else the tiny baseline is blown up to the
  # target (a pure rotation read in float32 is too: its round-off, ~1e-7, is above the tolerance).
  _, blown_up = normalize_poses(viewmats, None, "max_distance", target)
  if baseline <= 1e-12:
    assert blown_up == 1.0
  else:
    assert blown_up == pytest.approx(target / _extent(viewmats)) and blown_up >= target / (2 * baseline)


def test_extent_floor_above_the_floor_is_max_distance():
  viewmats = np.linalg.inv(random_trajectory(6, seed=5))
  assert _extent(viewmats[:4]) > 0.5
  for floor in (0.01, 0.5):
    normalized, scale = normalize_poses(viewmats, 4, "extent_floor", 1.5, floor)
    expected, expected_scale = normalize_poses(viewmats, 4, "max_distance", 1.5)
    assert scale == expected_scale
    np.testing.assert_array_equal(normalized, expected)
  np.testing.assert_array_equal(normalize_trajectory_scale(random_trajectory(6, seed=5), 1.5, "extent_floor"),
                                normalize_trajectory_scale(random_trajectory(6, seed=5), 1.5, "max_distance"))


def test_extent_floor_in_jax_matches_numpy():
  viewmats = _jittered_rotation(5, 1e-4)
  normalize = jax.jit(lambda v: normalize_poses(v, None, "extent_floor", 1.0, 0.1))
  normalized, scale = normalize(jnp.asarray(viewmats, jnp.float32))
  assert normalized.dtype == jnp.float32 and float(scale) == pytest.approx(10.0)
  np.testing.assert_allclose(np.asarray(normalized), normalize_poses(viewmats, None, "extent_floor", 1.0, 0.1)[0],
                             atol=1e-5)


def test_extent_floor_errors():
  viewmats = _jittered_rotation(3, 1e-4)
  for floor in (0.0, -1.0, float("inf"), float("nan")):
    with pytest.raises(WonderlandError, match="positive finite floor"):
      normalize_poses(viewmats, None, "extent_floor", 1.0, floor)
  normalize_poses(viewmats, None, "max_distance", 1.0, 0.0)  # the other modes do not read it


@pytest.mark.parametrize("baseline", [0.0, 1e-4, 0.03, 3.0])
def test_renormalization_leaves_normalized_poses_unchanged(baseline):
  """The training steps' view (clips normalised by the data pipeline, then re-normalised with
  `renormalization`) equals the inference view (the raw cameras normalised once)."""
  viewmats = _jittered_rotation(5, baseline)
  settings = dict(scale_mode="extent_floor", scale_target=1.0, scale_floor=0.1)
  again = renormalization(**settings)
  assert again == dict(settings, scale_floor=1.0)
  for mode in ("max_distance", "path_length", "none"):
    assert renormalization(mode, 2.0, 0.1) == dict(scale_mode=mode, scale_target=2.0, scale_floor=0.1)
  normalized, _ = normalize_poses(viewmats, None, "extent_floor", 1.0, 0.1)
  renormalized, scale = normalize_poses(normalized, None, again["scale_mode"], again["scale_target"],
                                        again["scale_floor"])
  assert scale == pytest.approx(1.0, abs=1e-12)
  np.testing.assert_allclose(renormalized, normalized, atol=1e-12)
  if 0 < baseline < 0.1:  # why it is needed: the plain settings would scale a short clip up again
    assert normalize_poses(normalized, None, "extent_floor", 1.0, 0.1)[1] > 2.0
  K = np.broadcast_to(K_EXAMPLE, (5, 3, 3))
  raw = Camera.from_viewmat(jnp.asarray(viewmats, jnp.float32), K, 64, 36)
  clip = Camera.from_viewmat(jnp.asarray(normalized, jnp.float32), K, 64, 36)
  np.testing.assert_allclose(np.asarray(conditioning_rays(clip, 12, 16, **again)),
                             np.asarray(conditioning_rays(raw, 12, 16, **settings)), atol=1e-5)
