"""The FVD feature network (Inception-I3D) against a plain-torch reference.

The reference is piergiaj's `pytorch_i3d.py` InceptionI3d written compactly in `torch.nn` with his key layout
(`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1a.bn.running_var`, `logits.conv3d.bias`, ...), his dynamic 'SAME'
padding (`compute_pad` + `F.pad`), the fixed AvgPool3d((2, 7, 7), stride 1) head and VideoGPT's mean of the
logits over time; the preprocessing is VideoGPT's / common_metrics' `preprocess_single` (`F.interpolate`
bilinear, align_corners=False, shorter side to 224, centre crop, [0, 1] -> [-1, 1]). Random seeded weights and
non-trivial BatchNorm running statistics, saved with `torch.save(state_dict)` (and as .safetensors).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from tests.helpers.reference_models import assert_close_relative as _assert_close
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.eval.features import frechet_video_distance, fvd_features, fvd_statistics
from wonderland_jax.eval.frechet import feature_statistics, frechet_distance
from wonderland_jax.models.i3d import BN_EPS, ENDPOINT_NAMES, load_i3d, preprocess_videos, same_padding

torch.set_num_threads(2)


# ----------------------------------------------------------------------------------------------- reference


def _compute_pad(kernel, stride, size):
  """piergiaj's `compute_pad`."""
  if size % stride == 0:
    return max(kernel - stride, 0)
  return max(kernel - (size % stride), 0)


def _pad_same(x, kernel, stride):
  pads = []
  for dim in (2, 1, 0):  # F.pad takes the last axis first: (w_f, w_b, h_f, h_b, t_f, t_b)
    pad = _compute_pad(kernel[dim], stride[dim], x.shape[2 + dim])
    pads += [pad // 2, pad - pad // 2]
  return F.pad(x, pads)


class MaxPool3dSamePadding(nn.MaxPool3d):
  def forward(self, x):
    return super().forward(_pad_same(x, self.kernel_size, self.stride))


class Unit3D(nn.Module):
  def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True, bias=False, eps=1e-5):
    super().__init__()
    self.kernel, self.stride, self.relu = kernel, stride, relu
    self.conv3d = nn.Conv3d(cin, cout, kernel, stride, padding=0, bias=bias)
    if bn:
      self.bn = nn.BatchNorm3d(cout, eps=eps, momentum=0.01)

  def forward(self, x):
    x = self.conv3d(_pad_same(x, self.kernel, self.stride))
    if hasattr(self, "bn"):
      x = self.bn(x)
    return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
  def __init__(self, cin, outs, eps):
    super().__init__()
    self.b0 = Unit3D(cin, outs[0], eps=eps)
    self.b1a = Unit3D(cin, outs[1], eps=eps)
    self.b1b = Unit3D(outs[1], outs[2], (3, 3, 3), eps=eps)
    self.b2a = Unit3D(cin, outs[3], eps=eps)
    self.b2b = Unit3D(outs[3], outs[4], (3, 3, 3), eps=eps)
    self.b3a = MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(1, 1, 1), padding=0)
    self.b3b = Unit3D(cin, outs[5], eps=eps)

  def forward(self, x):
    return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


MIXED = {
  "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]), "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
  "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]), "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
  "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]), "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
  "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]), "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
  "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}


class InceptionI3d(nn.Module):
  """piergiaj's InceptionI3d (VideoGPT's forward: logits averaged over time), seeded random weights."""

  def __init__(self, seed, eps=1e-5, num_classes=400):
    super().__init__()
    torch.manual_seed(seed)
    layers = [
      ("Conv3d_1a_7x7", Unit3D(3, 64, (7, 7, 7), (2, 2, 2), eps=eps)),
      ("MaxPool3d_2a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=0)),
      ("Conv3d_2b_1x1", Unit3D(64, 64, eps=eps)),
      ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3), eps=eps)),
      ("MaxPool3d_3a_3x3", MaxPool3dSamePadding(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=0))]
    for name, (cin, outs) in MIXED.items():
      if name == "Mixed_4b":
        layers.append(("MaxPool3d_4a_3x3", MaxPool3dSamePadding(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=0)))
      if name == "Mixed_5b":
        layers.append(("MaxPool3d_5a_2x2", MaxPool3dSamePadding(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=0)))
      layers.append((name, InceptionModule(cin, outs, eps)))
    self.names = [name for name, _ in layers]
    for name, layer in layers:
      self.add_module(name, layer)
    self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
    self.dropout = nn.Dropout(0.5)
    self.logits = Unit3D(1024, num_classes, bn=False, relu=False, bias=True)
    for module in self.modules():
      if isinstance(module, nn.Conv3d):  # He init keeps activations O(1) through the depth
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        if module.bias is not None:
          nn.init.uniform_(module.bias, -0.1, 0.1)
      if isinstance(module, nn.BatchNorm3d):
        module.weight.data.uniform_(0.5, 1.5)
        module.bias.data.uniform_(-0.2, 0.2)
        module.running_mean.data.uniform_(-0.3, 0.3)
        module.running_var.data.uniform_(0.5, 2.0)
    self.eval()

  def endpoints(self, x):
    out = {}
    for name in self.names:
      x = self._modules[name](x)
      out[name] = x
    return out

  def head(self, mixed_5c):
    x = self.logits(self.dropout(self.avg_pool(mixed_5c)))
    return x.squeeze(3).squeeze(3).mean(dim=2)

  def forward(self, x):
    return self.head(self.endpoints(x)["Mixed_5c"])

  def extract_features(self, x):
    return self.avg_pool(self.endpoints(x)["Mixed_5c"])


def torch_preprocess(videos: np.ndarray, resolution=224) -> torch.Tensor:
  """common_metrics' `fvd/styleganv/fvd.py` `preprocess_single` per video (the float path of its videogpt one):
  (B, T, H, W, 3) in [0, 1] -> (B, 3, T, 224, 224) in [-1, 1]."""
  out = []
  for video in torch.from_numpy(videos).permute(0, 4, 1, 2, 3):  # CTHW; interpolate treats C as the batch
    c, t, h, w = video.shape
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    h, w = video.shape[2:]
    top, left = (h - resolution) // 2, (w - resolution) // 2
    video = video[:, :, top:top + resolution, left:left + resolution]
    out.append((video - 0.5) * 2)
  return torch.stack(out)


# ----------------------------------------------------------------------------------------------- helpers


def _channels_last(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), 1, -1)


def _videos(seed, shape):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


def _save_safetensors(state: dict, path):
  safetensors.numpy.save_file({k: v.detach().numpy() for k, v in state.items()}, str(path))
  return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(torch net, .pt path, .safetensors path, videos (4, 9, 64, 80, 3), torch logits (4, 400), pool (4, 1024))."""
  root = tmp_path_factory.mktemp("i3d")
  net = InceptionI3d(seed=0)
  torch.save(net.state_dict(), root / "i3d_pretrained_400.pt")
  _save_safetensors(net.state_dict(), root / "i3d.safetensors")
  videos = _videos(1, (4, 9, 64, 80, 3))
  # half of them a darker, smoother family, so that the two Fréchet sets differ
  videos[2:] = 0.5 * videos[2:] + 0.25 * np.roll(videos[2:], 1, axis=3)
  with torch.no_grad():
    mixed_5c = net.endpoints(torch_preprocess(videos))["Mixed_5c"]
    logits = net.head(mixed_5c).numpy()
    pool = net.avg_pool(mixed_5c).mean(dim=(2, 3, 4)).numpy()
  return net, root / "i3d_pretrained_400.pt", root / "i3d.safetensors", videos, logits, pool


@pytest.fixture(scope="module")
def model(reference):
  return load_i3d(reference[1])


@pytest.fixture(scope="module")
def ours(reference, model):
  """Our (logits (4, 400), pool (4, 1024)) of the reference's videos, from one backbone pass."""

  @jax.jit
  def both(videos):
    mixed_5c = model.endpoints(preprocess_videos(videos), "Mixed_5c")["Mixed_5c"]
    return model.head(mixed_5c, "logits"), model.head(mixed_5c, "pool")

  return tuple(np.asarray(f) for f in both(jnp.asarray(reference[3])))


# ----------------------------------------------------------------------------------------------- tests


def test_same_padding_is_piergiajs():
  for size in range(1, 20):
    for kernel in (1, 2, 3, 7):
      for stride in (1, 2):
        front, back = same_padding(size, kernel, stride)
        assert front + back == _compute_pad(kernel, stride, size) and back - front in (0, 1)
        assert (size + front + back - kernel) // stride + 1 == math.ceil(size / stride)  # TF 'SAME' size


@pytest.mark.parametrize("shape", [(2, 5, 40, 60, 3), (1, 3, 300, 257, 3), (1, 2, 224, 224, 3), (1, 2, 49, 49, 3)])
def test_preprocessing_matches_torch_interpolate(shape):
  videos = _videos(2, shape)
  ours = jax.jit(preprocess_videos)(jnp.asarray(videos))
  expected = _channels_last(torch_preprocess(videos))
  assert ours.shape == (*shape[:2], 224, 224, 3)
  _assert_close(ours, expected, f"preprocess {shape}", rel=1e-5)
  assert float(jnp.min(ours)) >= -1.0 and float(jnp.max(ours)) <= 1.0
  uint8 = (videos * 255).astype(np.uint8)
  np.testing.assert_allclose(preprocess_videos(jnp.asarray(uint8)), preprocess_videos(jnp.asarray(uint8 / 255.0)),
                             atol=1e-6)


def test_endpoints_match_at_odd_sizes(reference, model):
  """Every endpoint on a small odd-sized input: the 'SAME' padding of every conv and pool for odd and even
  sizes and strides (10 frames -> 5 -> 3 -> 2; 37 x 50 -> 19 x 25 -> 10 x 13 -> 5 x 7 -> 3 x 4 -> 2 x 2)."""
  net = reference[0]
  x = 2 * _videos(3, (1, 10, 37, 50, 3)) - 1
  ours = jax.jit(lambda x: model.endpoints(x, ENDPOINT_NAMES))(jnp.asarray(x))
  with torch.no_grad():
    expected = net.endpoints(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))
  assert list(expected) == list(ENDPOINT_NAMES)
  for name in ENDPOINT_NAMES:
    _assert_close(ours[name], _channels_last(expected[name]), name)
  assert ours["Mixed_5c"].shape == (1, 2, 2, 2, 1024)


def test_features_match_reference(reference, ours):
  """The full network at 224 x 224 (9 frames: Mixed_5c is 2 x 7 x 7, the (2, 7, 7) pool leaves one step)."""
  _, _, _, _, logits, pool = reference
  assert ours[0].shape == (4, 400) and ours[1].shape == (4, 1024)
  _assert_close(ours[0], logits, "logits")
  _assert_close(ours[1], pool, "pool features")
  assert np.std(logits) > 1e-2 and np.std(pool) > 1e-2  # a non-degenerate reference


def test_head_averages_logits_over_time(reference, model):
  """Mixed_5c with 3 or 4 time steps (17 to 32 frames): the (2, 7, 7) pool leaves 2 or 3, the logits are their
  mean (VideoGPT's forward) and the pool features the mean of the pooled steps (`extract_features`)."""
  net = reference[0]
  for steps in (3, 4):
    mixed_5c = np.abs(np.random.default_rng(steps).normal(size=(2, steps, 7, 7, 1024))).astype(np.float32)
    with torch.no_grad():
      x = torch.from_numpy(np.moveaxis(mixed_5c, -1, 1).copy())
      logits, pool = net.head(x).numpy(), net.avg_pool(x).mean(dim=(2, 3, 4)).numpy()
    _assert_close(model.head(jnp.asarray(mixed_5c), "logits"), logits, f"logits over {steps - 1} steps")
    _assert_close(model.head(jnp.asarray(mixed_5c), "pool"), pool, f"pool over {steps - 1} steps")


class _Stub(nnx.Module):
  """Stands in for I3D in the batching helpers: per-video features from a fixed projection of frame means."""

  num_classes = 8  # small: the Fréchet distances below stay cheap

  def __init__(self):
    self.projection = nnx.Param(jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)), jnp.float32))

  def __call__(self, videos, *, resize=True, features="logits"):
    x = preprocess_videos(videos, resize=False).mean(axis=(1, 2, 3))
    return jnp.tanh(x @ self.projection[...] * (1.0 if resize else 2.0))


def test_batching_helpers():
  stub = _Stub()
  videos = _videos(6, (5, 2, 4, 4, 3))
  direct = np.asarray(stub(jnp.asarray(videos)))
  for batch_size in (2, 3, 8):  # padded last batches (of 1, 2 and 5 videos)
    np.testing.assert_allclose(fvd_features(stub, videos, batch_size=batch_size), direct, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(fvd_features(stub, videos, resize=False), np.asarray(stub(videos, resize=False)),
                             rtol=1e-6, atol=1e-7)
  uint8 = (videos * 255).astype(np.uint8)
  np.testing.assert_allclose(fvd_features(stub, uint8, batch_size=2), np.asarray(stub(jnp.asarray(uint8))),
                             rtol=1e-6, atol=1e-7)
  assert fvd_features(stub, videos[:0]).shape == (0, 8)
  stats, expected = fvd_statistics(stub, videos, batch_size=2), feature_statistics(direct)
  np.testing.assert_allclose(stats.mean, expected.mean, atol=1e-6)
  np.testing.assert_allclose(stats.covariance, expected.covariance, atol=1e-6 * np.max(np.abs(expected.covariance)))
  other = _videos(7, (4, 2, 4, 4, 3)) ** 2
  fvd = frechet_video_distance(stub, videos, other, batch_size=3)
  assert fvd > 0 and fvd == pytest.approx(frechet_distance(expected, feature_statistics(stub(other))), rel=1e-6)
  with pytest.raises(WonderlandError, match="batch_size must be >= 1"):
    fvd_features(stub, videos, batch_size=0)


def test_safetensors_file_loads_the_same(reference, model):
  from_safetensors = load_i3d(reference[2])
  flat_a, flat_b = (dict(nnx.to_flat_state(nnx.state(m, nnx.Param))) for m in (model, from_safetensors))
  assert flat_a.keys() == flat_b.keys() and len(flat_a) == len(reference[0].state_dict()) - 57
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path].get_value(), flat_b[path].get_value(), err_msg=str(path))


def test_frechet_distance_of_features_matches_torch(reference, ours):
  """FVD on 2 + 2 videos: our features through our Fréchet distance vs the torch features through StyleGAN-V's
  / common_metrics' formula (numpy cov, the trace of the square root of the covariance product)."""
  logits = reference[4].astype(np.float64)

  def stylegan_v_fd(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrtm(S_a S_b), as the sum of the square roots of its eigenvalues (scipy's sqrtm takes seconds here)
    trace_root = np.sum(np.sqrt(np.linalg.eigvals(sigma_a @ sigma_b).astype(complex)))
    return float(np.real(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b) - 2 * trace_root))

  expected = stylegan_v_fd(logits[:2], logits[2:])
  fvd = frechet_distance(feature_statistics(ours[0][:2]), feature_statistics(ours[0][2:]))
  assert expected > 1.0
  assert abs(fvd - expected) <= 1e-4 * expected, (fvd, expected)


def test_bn_eps_is_used(model, tmp_path):
  """piergiaj's eps (1e-3) differs from VideoGPT's (1e-5, the default; `model` has the same seeded weights) and
  each loaded model follows its reference."""
  net = InceptionI3d(seed=0, eps=BN_EPS["piergiaj"])
  torch.save(net.state_dict(), tmp_path / "rgb_imagenet.pt")
  x = 2 * _videos(5, (1, 4, 33, 33, 3)) - 1
  with torch.no_grad():
    expected = _channels_last(net.endpoints(torch.from_numpy(np.moveaxis(x, -1, 1).copy()))["Conv3d_2c_3x3"])
  piergiaj = load_i3d(tmp_path / "rgb_imagenet.pt", bn_eps=BN_EPS["piergiaj"])
  assert piergiaj.Conv3d_1a_7x7.bn.eps == 1e-3 and model.Mixed_5c.b3b.bn.eps == 1e-5
  _assert_close(piergiaj.endpoints(jnp.asarray(x), "Conv3d_2c_3x3")["Conv3d_2c_3x3"], expected, "eps 1e-3")
  with pytest.raises(AssertionError):
    _assert_close(model.endpoints(jnp.asarray(x), "Conv3d_2c_3x3")["Conv3d_2c_3x3"], expected, "eps 1e-5")


# ----------------------------------------------------------------------------------------------- errors


def _state_dict(reference):
  return {k: v.clone() for k, v in reference[0].state_dict().items()}


def test_missing_and_misshaped_keys_are_named(reference, tmp_path):
  state = _state_dict(reference)
  del state["Mixed_4d.b2b.bn.running_var"]
  state["Mixed_3b.b1b.conv3d.weight"] = state["Mixed_3b.b1b.conv3d.weight"][:, :, :1]
  state["Mixed_6a.b0.conv3d.weight"] = torch.zeros(3)
  path = tmp_path / "broken.pt"
  torch.save(state, path)
  with pytest.raises(InputFileError) as info:
    load_i3d(path)
  message = str(info.value)
  assert f"{path}: not a piergiaj InceptionI3d state_dict" in message
  assert "Mixed_4d.b2b.bn.running_var (64,)" in message  # missing, with the expected shape
  assert "Mixed_3b.b1b.conv3d.weight: (128, 96, 1, 3, 3) in the file, expected (128, 96, 3, 3, 3)" in message
  assert "Mixed_6a.b0.conv3d.weight" in message  # unexpected
  assert "num_batches_tracked" not in message  # ignored


def test_file_without_step_counters_and_other_class_count(reference, tmp_path):
  """Old (torch < 0.4.1) files have no num_batches_tracked; a replaced logits layer sets the class count."""
  state = {k: v for k, v in _state_dict(reference).items() if not k.endswith("num_batches_tracked")}
  state["logits.conv3d.weight"], state["logits.conv3d.bias"] = torch.zeros(157, 1024, 1, 1, 1), torch.ones(157)
  path = _save_safetensors(state, tmp_path / "charades.safetensors")
  model = load_i3d(path)
  assert model.num_classes == 157
  np.testing.assert_array_equal(model.logits.conv3d.bias[...], np.ones(157, np.float32))


def test_bad_inputs_are_named(model, tmp_path):
  with pytest.raises(InputFileError, match="nothing.pt: weights file not found"):
    load_i3d(tmp_path / "nothing.pt")
  with pytest.raises(WonderlandError, match=r"at least 9 frames\); got 1 x 7 x 7"):
    jax.eval_shape(lambda v: model(v), jax.ShapeDtypeStruct((1, 8, 224, 224, 3), jnp.float32))
  with pytest.raises(WonderlandError, match="7 x 7"):
    jax.eval_shape(lambda v: model(v, resize=False), jax.ShapeDtypeStruct((1, 16, 128, 128, 3), jnp.float32))
  with pytest.raises(WonderlandError, match="unknown features 'pooled'"):
    jax.eval_shape(lambda v: model(v, features="pooled"), jax.ShapeDtypeStruct((1, 16, 64, 64, 3), jnp.float32))
  with pytest.raises(WonderlandError, match=r"\(B, T, H, W, 3\)"):
    model(jnp.zeros((1, 16, 64, 64)))
  with pytest.raises(WonderlandError, match="no endpoint"):
    model.endpoints(jnp.zeros((1, 4, 32, 32, 3)), ("Mixed_6a",))
