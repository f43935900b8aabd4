"""Image quality metrics for novel-view renderings: PSNR, SSIM and LPIPS, pure jnp functions.

    psnr(pred, target)                  # (..., H, W, C) in [0, 1] -> (...,) dB
    ssim(pred, target)                  # (..., H, W, C) in [0, 1] -> (...,)
    lpips(load_lpips(vgg16_pth, lpips_vgg_pth), pred, target)   # (..., H, W, 3) in [0, 1] -> (...,)

Images are channels-last and batched over any leading axes; every metric is per image, computed in float32.
Nothing is clipped: clip renderings to [0, 1] first, as evaluation protocols do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.vgg import LPIPS

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(pred: jax.Array, target: jax.Array, what: str) -> None:
  if pred.shape != target.shape:
    raise WonderlandError(f"{what}: pred and target shapes differ: {pred.shape} vs {target.shape}")
  if pred.ndim < 3:
    raise WonderlandError(f"{what}: images must have shape (..., H, W, C), got {pred.shape}")


def psnr(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio, 10 log10(data_range^2 / MSE) with the MSE over (H, W, C) of each image.

  pred, target: (..., H, W, C) -> (...,) float32 dB (inf for identical images).
  """
  _check_pair(pred, target, "psnr")
  error = pred.astype(jnp.float32) - target.astype(jnp.float32)
  mse = jnp.mean(error * error, axis=(-3, -2, -1))
  return 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The normalised 1-D Gaussian, exp(-x^2 / (2 sigma^2)) at x = -(size // 2) .. size // 2; float64 (size,)."""
  x = np.arange(size, dtype=np.float64) - size // 2
  window = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return window / window.sum()


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable 'valid' correlation of (N, H, W, C) with `window` along H then W -> (N, H - k + 1, W - k + 1, C).
  Written as sums of shifted slices: exact float32 arithmetic whatever the backend's convolution precision."""
  taps = len(window)
  height, width = x.shape[1] - taps + 1, x.shape[2] - taps + 1
  x = sum(float(w) * x[:, i:i + height] for i, w in enumerate(window))
  return sum(float(w) * x[:, :, i:i + width] for i, w in enumerate(window))


def ssim(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Structural similarity (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03:
  local means, variances and covariance (population, not sample) filtered per channel without padding (the
  'valid' region only), the SSIM map averaged over space and channels.

  pred, target: (..., H, W, C), H and W >= 11 -> (...,) float32.

  The same number as skimage's `structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=data_range, channel_axis=-1)` (which filters with reflect padding,
  then crops the 5-pixel border) and as pytorch-msssim's `ssim(..., data_range, win_size=11, win_sigma=1.5)`.
  The `ssim` of 3DGS's `utils/loss_utils.py` zero-pads instead (`padding=5`) and averages over the whole
  image: it differs near the borders.
  """
  _check_pair(pred, target, "ssim")
  height, width, channels = pred.shape[-3:]
  if height < SSIM_WINDOW or width < SSIM_WINDOW:
    raise WonderlandError(f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
  lead = pred.shape[:-3]
  x = jnp.reshape(pred.astype(jnp.float32), (-1, height, width, channels))
  y = jnp.reshape(target.astype(jnp.float32), (-1, height, width, channels))
  window = gaussian_window()
  # Second moments of the data centred on each image's channel mean: the same variances, without the float32
  # cancellation of E[x^2] - E[x]^2 on bright images.
  x_center = jnp.mean(x, axis=(1, 2), keepdims=True)
  y_center = jnp.mean(y, axis=(1, 2), keepdims=True)
  x, y = x - x_center, y - y_center
  mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
  var_x = _filter_valid(x * x, window) - mu_x * mu_x
  var_y = _filter_valid(y * y, window) - mu_y * mu_y
  cov = _filter_valid(x * y, window) - mu_x * mu_y
  mu_x, mu_y = mu_x + x_center, mu_y + y_center
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  return jnp.mean(ssim_map, axis=(1, 2, 3)).reshape(lead)


def lpips(params_or_model: LPIPS | tuple[nnx.GraphDef, nnx.State], pred: jax.Array, target: jax.Array) -> jax.Array:
  """LPIPS distance (the `lpips` package's v0.1 semantics, see `wonderland_jax.models.vgg.LPIPS`).

  params_or_model: an `LPIPS` (`load_lpips(backbone, heads, net)`) or its `nnx.split` (graphdef, state) pair, the
  form to pass through `jax.jit`. pred, target: (..., H, W, 3) in [0, 1] (converted to the [-1, 1] lpips wants)
  -> (...,) float32; 0 for identical images, larger is more different.
  """
  model = nnx.merge(*params_or_model) if isinstance(params_or_model, tuple) else params_or_model
  if not isinstance(model, LPIPS):
    raise WonderlandError(f"lpips: expected an LPIPS model (see load_lpips), got a {type(model).__name__}")
  return model(pred, target)
