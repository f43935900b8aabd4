"""PSNR, SSIM and the lpips wrapper. SSIM against an independent float64 reference: skimage's algorithm
(scipy.ndimage Gaussian filter with reflect padding, sigma 1.5, truncate 3.5, the 5-pixel border cropped)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval import lpips, psnr, ssim
from wonderland_jax.models.vgg import LPIPS


def _reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
  """skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=data_range, channel_axis=-1), in float64: x, y (H, W, C)."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  per_channel = []
  for c in range(x.shape[-1]):
    a, b = x[..., c], y[..., c]

    def blur(image):
      return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    per_channel.append(ssim_map[5:-5, 5:-5].mean())
  return float(np.mean(per_channel))


def _pair(seed, shape, noise, offset=0.0):
  rng = np.random.default_rng(seed)
  target = ndimage.uniform_filter(rng.uniform(0, 1, shape), size=(1,) * (len(shape) - 3) + (5, 5, 1))
  target = np.clip(target + offset, 0, 1)
  pred = np.clip(target + noise * rng.standard_normal(shape), 0, 1)
  return pred.astype(np.float32), target.astype(np.float32)


@pytest.mark.parametrize("noise,offset", [(0.02, 0.0), (0.1, 0.0), (0.3, 0.0), (0.01, 0.6)])
def test_ssim_matches_float64_reference(noise, offset):
  pred, target = _pair(int(noise * 100), (2, 3, 48, 40, 3), noise, offset)
  ours = np.asarray(ssim(jnp.asarray(pred), jnp.asarray(target)))
  assert ours.shape == (2, 3)
  expected = np.array([[_reference_ssim(p, t) for p, t in zip(row_p, row_t)] for row_p, row_t in zip(pred, target)])
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_ssim_data_range_and_identity():
  pred, target = _pair(1, (32, 32, 3), 0.05)
  np.testing.assert_allclose(ssim(jnp.asarray(pred * 255), jnp.asarray(target * 255), data_range=255.0),
                             _reference_ssim(pred * 255, target * 255, 255.0), atol=1e-5)
  np.testing.assert_allclose(ssim(jnp.asarray(target), jnp.asarray(target)), 1.0, atol=1e-6)
  assert abs(float(jax.jit(ssim)(jnp.asarray(target), jnp.asarray(target))) - 1.0) < 1e-6


def test_psnr_known_values():
  target = jnp.full((2, 16, 16, 3), 0.25)
  np.testing.assert_allclose(psnr(target + 0.125, target), 10 * np.log10(64), rtol=1e-7)  # exact in float32
  base = jnp.asarray(np.random.default_rng(0).uniform(0, 0.9, (4, 1, 8, 8, 3)).astype(np.float32))
  values = psnr(base + 0.1, base)
  assert values.shape == (4, 1)
  np.testing.assert_allclose(values, 20.0, atol=1e-4)
  np.testing.assert_allclose(psnr(base * 255 + 25.5, base * 255, data_range=255.0), 20.0, atol=1e-4)
  assert np.isinf(psnr(base, base)).all()


def test_metrics_reject_bad_shapes():
  with pytest.raises(WonderlandError, match="shapes differ"):
    psnr(jnp.zeros((8, 8, 3)), jnp.zeros((8, 9, 3)))
  with pytest.raises(WonderlandError, match="at least 11x11"):
    ssim(jnp.zeros((10, 32, 3)), jnp.zeros((10, 32, 3)))
  with pytest.raises(WonderlandError, match="expected an LPIPS model"):
    lpips(object(), jnp.zeros((16, 16, 3)), jnp.zeros((16, 16, 3)))


def _random_lpips(net: str, seed: int = 0) -> LPIPS:
  """An LPIPS with random weights (He-normal convolutions, non-negative heads), without compiling initialisers."""
  model = nnx.eval_shape(lambda: LPIPS(net, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)

  def conv(leaf):
    fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) == 4 else 1
    return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(np.float32))

  nnx.update(model.net, jax.tree.map(conv, nnx.state(model.net, nnx.Param)))
  nnx.update(model.heads, jax.tree.map(lambda leaf: jnp.asarray(rng.uniform(0, 0.1, leaf.shape).astype(np.float32)),
                                       nnx.state(model.heads, nnx.Param)))
  return model


def test_lpips_wrapper():
  model = _random_lpips("alex")  # the values against torch are in tests/models/test_vgg.py
  pred, target = (jnp.asarray(a) for a in _pair(2, (2, 32, 32, 3), 0.1))
  metric = jax.jit(lpips)  # the (graphdef, state) form goes through jit
  distance = metric(nnx.split(model), pred, target)
  assert distance.shape == (2,) and np.all(np.asarray(distance) > 0)
  np.testing.assert_allclose(metric(nnx.split(model), target, pred), distance, rtol=1e-6)  # symmetric
  np.testing.assert_allclose(metric(nnx.split(model), target, target), 0.0, atol=1e-10)
  np.testing.assert_allclose(jax.jit(lambda p, t: lpips(model, p, t))(pred, target), distance, rtol=1e-6)
