"""The FID Inception against a plain-torch reference.

There is no torchvision or pytorch-fid here: the reference is torchvision's `Inception3` block layout (BasicConv2d,
InceptionA..E, the stem) with pytorch-fid's patches (`FIDInceptionA/C/E_1`: average pools without the padding,
`FIDInceptionE_2`: max pool) written out in `torch.nn` below, num_classes 1008 and no AuxLogits as
`fid_inception_v3()` builds it, random seeded weights and BatchNorm statistics, saved with
`torch.save(model.state_dict())`. The preprocessing is pytorch-fid's `InceptionV3.forward`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from tests.helpers.reference_models import assert_close_relative as _max_error
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.eval.features import fid_features, fid_statistics
from wonderland_jax.eval.frechet import feature_statistics, frechet_distance
from wonderland_jax.models.inception import FIDInception, load_fid_inception, preprocess


class BasicConv2d(nn.Module):
  def __init__(self, cin, cout, **kwargs):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg(x):  # pytorch-fid's patch: TensorFlow's average pool leaves the padding out
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d7 = self.branch7x7dbl_1(x)
    for k in range(2, 6):
      d7 = getattr(self, f"branch7x7dbl_{k}")(d7)
    return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    b7 = x
    for k in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{k}")(b7)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
  """FIDInceptionE_1 (max_pool=False) / FIDInceptionE_2 (max_pool=True)."""

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg(x)
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3), self.branch3x3dbl_3a(d3),
                      self.branch3x3dbl_3b(d3), self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):
  """`fid_inception_v3()`'s modules, in pytorch-fid's `InceptionV3` order; forward -> (pool3 (B, 2048), logits)."""

  def __init__(self, seed: int):
    super().__init__()
    torch.manual_seed(seed)
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = FIDInceptionA(192, 32)
    self.Mixed_5c = FIDInceptionA(256, 64)
    self.Mixed_5d = FIDInceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = FIDInceptionC(768, 128)
    self.Mixed_6c = FIDInceptionC(768, 160)
    self.Mixed_6d = FIDInceptionC(768, 160)
    self.Mixed_6e = FIDInceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = FIDInceptionE(1280, max_pool=False)
    self.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    self.fc = nn.Linear(2048, 1008)
    for module in self.modules():  # He init and BatchNorms far from the identity, activations stay O(1)
      if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
      elif isinstance(module, nn.BatchNorm2d):
        nn.init.uniform_(module.weight, 0.5, 1.5)
        nn.init.uniform_(module.bias, -0.3, 0.3)
        module.running_mean.uniform_(-0.3, 0.3)
        module.running_var.uniform_(0.5, 2.0)
        module.num_batches_tracked.fill_(1000)
    self.eval()

  def forward(self, x):
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, kernel_size=3, stride=2)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    pool3 = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
    return pool3, self.fc(pool3)


def pytorch_fid_preprocess(x: torch.Tensor) -> torch.Tensor:
  """pytorch-fid's InceptionV3(resize_input=True, normalize_input=True) input pipeline, (B, 3, H, W)."""
  return 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1


def _to_torch(x) -> torch.Tensor:
  return torch.from_numpy(np.moveaxis(np.asarray(x, np.float32), -1, 1).copy())


def _images(seed, shape):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(torch reference, path of its .pth state_dict, our model loaded from it)."""
  net = TorchFIDInception(seed=0)
  path = tmp_path_factory.mktemp("fid") / "pt_inception-test.pth"
  torch.save(net.state_dict(), path)
  return net, path, load_fid_inception(path)


def _state_dict(net) -> dict:
  return {key: value.clone() for key, value in net.state_dict().items()}


def _save_safetensors(state: dict, path):
  safetensors.numpy.save_file({k: v.detach().numpy() for k, v in state.items()}, str(path))
  return path


def test_features_and_logits_match_reference(reference):
  """The whole network without the resize at 139 x 107 (Mixed_7's grid 3 x 2: its pools see real borders)."""
  net, _, model = reference
  images = _images(0, (2, 139, 107, 3))
  with torch.no_grad():
    pool3, logits = net(2 * _to_torch(images) - 1)
  ours_pool3 = fid_features(model, images, batch_size=2, resize=False)  # the jitted forward
  ours_logits = model.fc(jnp.asarray(ours_pool3))  # FIDInception.logits = fc(pool3)
  assert ours_pool3.shape == (2, 2048) and ours_pool3.dtype == np.float32
  pool3_error = _max_error(ours_pool3, pool3.numpy(), "pool3")
  logits_error = _max_error(ours_logits, logits.numpy(), "logits")
  assert float(pool3.std()) > 0.1 and float(pool3.abs().max()) < 1e3  # random weights kept activations sane
  assert pool3_error < 1e-5 and logits_error < 1e-5, (pool3_error, logits_error)


def test_full_pipeline_at_299(reference):
  """pytorch-fid's path end to end: a 64 x 80 image resized up to 299 x 299, normalised, through the network."""
  net, _, model = reference
  images = _images(1, (1, 64, 80, 3))
  with torch.no_grad():
    expected, _ = net(pytorch_fid_preprocess(_to_torch(images)))
  ours = fid_features(model, images, batch_size=1)
  assert isinstance(ours, np.ndarray) and ours.shape == (1, 2048)
  _max_error(ours, expected.numpy(), "pool3 at 299")


@pytest.mark.parametrize("size", [(64, 80), (512, 384), (299, 299), (300, 1000)])
def test_preprocess_matches_torch_interpolate(size):
  """jax.image.resize(bilinear, antialias=False) == F.interpolate(bilinear, align_corners=False), up and down."""
  images = _images(2, (2, *size, 3))
  expected = pytorch_fid_preprocess(_to_torch(images)).numpy()
  ours = np.asarray(preprocess(jnp.asarray(images)))
  assert ours.shape == (2, 299, 299, 3)
  error = np.max(np.abs(ours - np.moveaxis(expected, 1, -1)))
  assert error < 2e-6, f"{size}: {error}"
  assert -1 <= ours.min() and ours.max() <= 1


def test_batched_features_and_frechet_distance(reference):
  """fid_features batches (with a padded last batch) and uint8 input; FID of ours == FID of the reference's.
  Same input size and batch size as test_features_and_logits_match_reference: the jitted forward is reused."""
  net, _, model = reference
  rng = np.random.default_rng(3)
  real = rng.integers(0, 256, (4, 139, 107, 3), dtype=np.uint8)
  fake = np.clip(real[:3] / 255.0 + rng.normal(0, 0.2, (3, 139, 107, 3)), 0, 1).astype(np.float32)
  with torch.no_grad():
    expected_real = net(2 * _to_torch(real / 255.0) - 1)[0].numpy()
    expected_fake = net(2 * _to_torch(fake) - 1)[0].numpy()
  ours_real = fid_features(model, real, batch_size=2, resize=False)
  ours_fake = fid_features(model, fake, batch_size=2, resize=False)
  _max_error(ours_real, expected_real, "pool3 of uint8 images")
  _max_error(ours_fake, expected_fake, "pool3 of float images")
  # every 8th of the 2048 dimensions: frechet_distance at 2048-d takes ~20 s on the test machine's 2 cores
  dims = slice(None, None, 8)
  expected_fid = frechet_distance(feature_statistics(expected_real[:, dims]),
                                  feature_statistics(expected_fake[:, dims]))
  ours_fid = frechet_distance(feature_statistics(ours_real[:, dims]), feature_statistics(ours_fake[:, dims]))
  assert expected_fid > 0.01
  assert abs(ours_fid - expected_fid) <= 1e-4 * expected_fid, (ours_fid, expected_fid)
  streamed = fid_statistics(model, fake, batch_size=2, resize=False)
  np.testing.assert_allclose(streamed.mean, ours_fake.mean(axis=0), rtol=1e-6, atol=1e-6)
  assert streamed.count == 3 and streamed.covariance.shape == (2048, 2048)


def _assert_same_params(a, b):
  flat_a, flat_b = (dict(nnx.to_flat_state(nnx.state(m, nnx.Param))) for m in (a, b))
  assert flat_a.keys() == flat_b.keys() and len(flat_a) == 472
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path].get_value(), flat_b[path].get_value(), err_msg=str(path))


def test_safetensors_and_key_variants_load_the_same(reference, tmp_path):
  """.safetensors; a .pth without num_batches_tracked (older torch exports) and with torchvision's AuxLogits keys
  (ignored)."""
  net, _, model = reference
  state = _state_dict(net)
  _assert_same_params(model, load_fid_inception(_save_safetensors(state, tmp_path / "fid.safetensors")))
  other = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  assert len(other) == 472
  other.update({"AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1),
                "AuxLogits.conv0.bn.running_mean": torch.zeros(128), "AuxLogits.fc.weight": torch.zeros(1008, 768)})
  torch.save(other, tmp_path / "other.pth")
  _assert_same_params(model, load_fid_inception(tmp_path / "other.pth"))
  kernel = model.Mixed_6b.branch7x7_2.conv.kernel.get_value()  # (O, I, 1, 7) -> (1, 7, I, O)
  np.testing.assert_array_equal(kernel, state["Mixed_6b.branch7x7_2.conv.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.Mixed_7c.branch_pool.bn.var.get_value(),
                                state["Mixed_7c.branch_pool.bn.running_var"].numpy())


# ----------------------------------------------------------------------------------------------- errors


def test_missing_and_misshaped_keys_are_named(reference, tmp_path):
  net, _, _ = reference
  state = _state_dict(net)
  del state["Mixed_7c.branch_pool.bn.running_var"]
  state["Mixed_6b.branch7x7_2.conv.weight"] = state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3)
  state["Mixed_8a.conv.weight"] = torch.zeros(3)
  state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # torchvision's 1000 classes
  path = tmp_path / "broken.pth"
  torch.save(state, path)
  with pytest.raises(InputFileError) as info:
    load_fid_inception(path)
  message = str(info.value)
  assert f"{path}: not a pytorch-fid FID Inception state_dict (it looks like torchvision's ImageNet " in message
  assert "pt_inception-2015-12-05-6726825d.pth" in message
  assert "Mixed_7c.branch_pool.bn.running_var (192,)" in message  # missing, with the expected shape
  assert "Mixed_6b.branch7x7_2.conv.weight: (128, 128, 7, 1) in the file, expected (128, 128, 1, 7)" in message
  assert "Mixed_8a.conv.weight" in message  # unexpected
  assert "fc.weight: (1000, 2048) in the file, expected (1008, 2048)" in message
  assert "num_batches_tracked" not in message
  with pytest.raises(InputFileError, match="nothing.pth: weights file not found"):
    load_fid_inception(tmp_path / "nothing.pth")


def test_bad_inputs():
  model = nnx.eval_shape(lambda: FIDInception(rngs=nnx.Rngs(0)))
  with pytest.raises(WonderlandError, match="smaller than the 75 x 75"):
    model(jnp.zeros((1, 74, 100, 3)), resize=False)
  with pytest.raises(WonderlandError, match=r"\(B, H, W, 3\)"):
    model(jnp.zeros((1, 100, 100)))
  with pytest.raises(WonderlandError, match="batch_size must be positive"):
    fid_features(model, np.zeros((2, 80, 80, 3), np.float32), batch_size=0)
