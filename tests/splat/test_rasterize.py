"""The rasterizer against the float64 reference (values) and central finite differences (gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import splat_reference as reference
from tests.helpers.gaussians import random_camera, to_gaussians
from wonderland_jax.camera import Camera
from wonderland_jax.errors import WonderlandError
from wonderland_jax.splat import Gaussians, capacity_for, count_intersections, rasterize


def as_float64(gaussians: Gaussians) -> dict:
  return {k: (None if v is None else np.asarray(v, np.float64)) for k, v in vars(gaussians).items()}


CASES = [
    dict(seed=0, num=120, width=45, height=37),
    dict(seed=1, num=80, width=32, height=32, sh_degree=3),
    dict(seed=2, num=100, width=40, height=27, antialiased=True, sh_degree=1),
    dict(seed=3, num=90, width=33, height=41, radius_rule="per_axis", alpha_max=0.999),
    dict(seed=4, num=70, width=30, height=22, tile_size=8, background=(0.2, 0.5, 0.9), sh_degree=2),
    dict(seed=5, num=60, width=26, height=19, num_channels=5, tile_size=4),
]


def _render_both(case, dtype):
  case = dict(case)
  rng = np.random.default_rng(case.pop("seed"))
  width, height = case.pop("width"), case.pop("height")
  scene = reference.random_scene(rng, case.pop("num"), sh_degree=case.pop("sh_degree", 0),
                                 num_channels=case.pop("num_channels", 3))
  gaussians = to_gaussians(scene, dtype)
  camera = random_camera(rng, width, height, dtype)
  if "background" in case:
    case["background"] = np.asarray(case["background"])
  ours = rasterize(gaussians, camera, **case)
  ref = reference.render(as_float64(gaussians), np.asarray(camera.viewmat, np.float64),
                         np.asarray(camera.K, np.float64), width, height, **case)
  return ours, ref


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}")
def test_matches_float64_reference_in_float32(case):
  ours, (image, alpha, depth) = _render_both(case, jnp.float32)
  assert ours.image.dtype == jnp.float32
  assert alpha.max() > 0.5, "the scene should cover part of the image"
  np.testing.assert_allclose(ours.image, image, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ours.alpha, alpha, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(ours.depth, depth, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: f"seed{c['seed']}")
def test_matches_float64_reference_in_float64(case):
  with jax.enable_x64(True):
    ours, (image, alpha, depth) = _render_both(case, jnp.float64)
    assert ours.image.dtype == jnp.float64
    np.testing.assert_allclose(ours.image, image, atol=1e-10)
    np.testing.assert_allclose(ours.alpha, alpha, atol=1e-10)
    np.testing.assert_allclose(ours.depth, depth, atol=1e-9)


def test_early_termination_and_alpha_cap_are_honoured():
  """A stack of opaque splats on one pixel: the cap and the transmittance stop decide the result."""
  num = 6
  scene = dict(means=np.tile([0.0, 0.0, 1.0], (num, 1)) + np.arange(num)[:, None] * [0, 0, 0.1],
               quats=np.tile([1.0, 0, 0, 0], (num, 1)), scales=np.full((num, 3), 0.2),
               opacities=np.ones(num), colors=np.eye(num, 3, k=0) + 0.1, sh=None)
  K = np.array([[16.0, 0, 8.5], [0, 16.0, 8.5], [0, 0, 1]])  # the means project onto pixel (8, 8)'s centre
  camera = Camera.from_viewmat(jnp.eye(4), jnp.asarray(K, jnp.float32), 16, 16)
  for alpha_max, splats_used in ((0.98, 2), (0.999, 1)):
    out = rasterize(to_gaussians(scene), camera, alpha_max=alpha_max)
    ref = reference.render(scene, np.eye(4), K, 16, 16, alpha_max=alpha_max)
    np.testing.assert_allclose(out.image, ref[0], atol=1e-5)
    # 0.98: T = 0.02, 4e-4, then 8e-6 < 1e-4 stops; 0.999: T = 1e-3, then 1e-6 stops.
    np.testing.assert_allclose(1 - out.alpha[8, 8], (1 - alpha_max) ** splats_used, rtol=1e-3)
    expected_color = sum(alpha_max * (1 - alpha_max) ** i * scene["colors"][i] for i in range(splats_used))
    np.testing.assert_allclose(out.image[8, 8], expected_color, atol=1e-5)


def _loss_fn(camera, capacity, weights, **kwargs):
  def loss(gaussians):
    out = rasterize(gaussians, camera, capacity=capacity, **kwargs)
    return (jnp.sum(out.image * weights[0]) + jnp.sum(out.alpha * weights[1][..., 0])
            + jnp.sum(out.depth * weights[2][..., 0]))
  return jax.jit(loss)


@pytest.mark.parametrize("seed,antialiased,sh_degree", [(10, False, 2), (11, True, 0), (12, False, 3)])
def test_gradients_match_central_finite_differences(seed, antialiased, sh_degree):
  with jax.enable_x64(True):
    rng = np.random.default_rng(seed)
    width, height = 24, 20
    scene = reference.random_scene(rng, 14, sh_degree=sh_degree, spread=0.6)
    scene["opacities"] = rng.uniform(0.2, 0.9, 14)
    gaussians = to_gaussians(scene, jnp.float64)
    camera = random_camera(rng, width, height, jnp.float64)
    weights = [jnp.asarray(rng.normal(size=(height, width, c))) for c in (3, 1, 1)]
    capacity = capacity_for(int(count_intersections(gaussians, camera)))
    loss = _loss_fn(camera, capacity, weights, antialiased=antialiased)
    grads = jax.grad(loss)(gaussians)
    eps = 1e-6
    checked = 0
    for name in ("means", "quats", "scales", "opacities", "colors", "sh"):
      value = getattr(gaussians, name)
      if value is None:
        continue
      flat = np.asarray(value).ravel()
      numeric = np.zeros_like(flat)
      for i in range(flat.size):
        bumped = [flat.copy(), flat.copy()]
        bumped[0][i] += eps
        bumped[1][i] -= eps
        plus, minus = (float(loss(gaussians.replace(**{name: jnp.asarray(b.reshape(value.shape))})))
                       for b in bumped)
        numeric[i] = (plus - minus) / (2 * eps)
      analytic = np.asarray(getattr(grads, name)).ravel()
      scale = max(np.abs(numeric).max(), 1e-3)
      np.testing.assert_allclose(analytic, numeric, atol=1e-5 * scale, rtol=1e-4, err_msg=name)
      checked += np.count_nonzero(numeric)
    assert checked > 100, "the test scene should have many non-zero gradients"


def test_gradient_wrt_background_and_vmapped_batch():
  rng = np.random.default_rng(20)
  scene = reference.random_scene(rng, 50)
  gaussians = to_gaussians(scene)
  cameras = [random_camera(rng, 20, 18) for _ in range(3)]
  batch = jax.tree.map(lambda *xs: jnp.stack(xs), *cameras)
  together = rasterize(gaussians, batch)
  assert together.image.shape == (3, 18, 20, 3)
  for i, camera in enumerate(cameras):
    alone = rasterize(gaussians, camera)
    np.testing.assert_allclose(together.image[i], alone.image, atol=1e-6)
    np.testing.assert_allclose(together.depth[i], alone.depth, atol=1e-5)
  # jax.vmap over cameras with an explicit capacity gives the same images.
  capacity = capacity_for(int(count_intersections(gaussians, batch)))
  mapped = jax.jit(jax.vmap(lambda cam: rasterize(gaussians, cam, capacity=capacity).image))(batch)
  np.testing.assert_allclose(mapped, together.image, atol=1e-6)
  # d(image)/d(background) = transmittance.
  grad_bg = jax.grad(lambda bg: rasterize(gaussians, cameras[0], background=bg).image.sum())(jnp.zeros(3))
  np.testing.assert_allclose(grad_bg, np.full(3, float((1 - rasterize(gaussians, cameras[0]).alpha).sum())),
                             rtol=1e-5)


def test_degenerate_inputs_give_finite_outputs_and_gradients():
  num = 12
  scene = dict(
      means=np.array([[0, 0, 2.0], [0, 0, 0.0], [0, 0, -1.0], [1e6, 1e6, 1e6], [0, 0, 1e8], [0.1, 0, 2],
                      [0, 0.1, 3], [0, 0, 0.0105], [0.2, 0.2, 2], [0, 0, 2], [-0.3, 0.1, 5], [5, 5, 2]]),
      quats=np.array([[0, 0, 0, 0.0]] + [[1, 0, 0, 0.0]] * 10 + [[1e20, 0, 0, 1e20]]),
      scales=np.array([[0, 0, 0.0], [1, 1, 1], [1, 1, 1], [1e6] * 3, [1e3] * 3, [1e-30] * 3, [1e4, 1e-8, 1],
                       [0.01] * 3, [0.1, 0.1, 0.1], [50, 50, 50], [0.3, 0.0, 0.3], [1, 1, 1]]),
      opacities=np.array([1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1e-12, 0.5]),
      colors=np.random.default_rng(0).uniform(size=(num, 3)), sh=None)
  gaussians = to_gaussians(scene)
  camera = Camera.from_fov(jnp.eye(4), 32, 24, fov_x_deg=70)
  for antialiased in (False, True):
    out = rasterize(gaussians, camera, antialiased=antialiased)
    for value in (out.image, out.alpha, out.depth):
      assert np.all(np.isfinite(value))
    grads = jax.grad(lambda g: rasterize(g, camera, antialiased=antialiased).image.sum())(gaussians)
    for name, grad in vars(grads).items():
      if grad is not None:
        assert np.all(np.isfinite(grad)), name


def test_capacity_is_auto_sized_outside_jit_and_checked_inside():
  rng = np.random.default_rng(30)
  gaussians = to_gaussians(reference.random_scene(rng, 200))
  camera = random_camera(rng, 64, 48)
  needed = int(count_intersections(gaussians, camera))
  assert needed > 0
  reference_image = rasterize(gaussians, camera).image
  fits = jax.jit(lambda g: rasterize(g, camera, capacity=needed).image)(gaussians)
  np.testing.assert_allclose(fits, reference_image, atol=1e-6)
  too_small = jax.jit(lambda g: rasterize(g, camera, capacity=needed - 1).image)
  with pytest.raises(jax.errors.JaxRuntimeError, match="CapacityError: the rasterizer's pair buffer is too small"):
    jax.block_until_ready(too_small(gaussians))
  with pytest.raises(WonderlandError, match="needs an explicit capacity"):
    jax.jit(lambda g: rasterize(g, camera).image)(gaussians)


def test_chunk_and_batch_sizes_do_not_change_results():
  rng = np.random.default_rng(40)
  gaussians = to_gaussians(reference.random_scene(rng, 150))
  camera = random_camera(rng, 50, 35)
  base = rasterize(gaussians, camera)
  base_grad = jax.grad(lambda g: rasterize(g, camera).image.sum())(gaussians)
  for chunk_size, tiles_per_batch in ((1, 1), (7, 3), (128, 100)):
    kwargs = dict(chunk_size=chunk_size, tiles_per_batch=tiles_per_batch)
    other = rasterize(gaussians, camera, **kwargs)
    np.testing.assert_allclose(other.image, base.image, atol=2e-6)
    other_grad = jax.grad(lambda g: rasterize(g, camera, **kwargs).image.sum())(gaussians)
    np.testing.assert_allclose(other_grad.means, base_grad.means, atol=1e-4, rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
  gaussians = to_gaussians(reference.random_scene(np.random.default_rng(0), 10))
  camera = Camera.from_fov(jnp.eye(4), 16, 16, fov_x_deg=60)
  with pytest.raises(WonderlandError, match="background"):
    rasterize(gaussians, camera, background=jnp.zeros(4))
  with pytest.raises(WonderlandError, match="Gaussians.scales"):
    rasterize(gaussians.replace(scales=gaussians.scales[:5]), camera)
