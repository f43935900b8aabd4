"""VGG / AlexNet features, LPIPS and the perceptual loss against plain-torch references.

There is no torchvision or lpips package here: the references are `torch.nn` modules with torchvision's key
layout (`features` = its `cfgs` 'D' / 'E' and its AlexNet stack, written out below), random seeded weights,
saved with `torch.save(model.state_dict())`; LPIPS and the perceptual loss are written in torch from the lpips
package's and Chen & Koltun's / Long-LRM's formulas, slicing `features` by torchvision index.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx
from torch import nn

from tests.helpers.reference_models import assert_close_relative as _assert_close
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models.vgg import (
  LPIPS_TAPS,
  VGG,
  PerceptualConfig,
  PerceptualLoss,
  load_lpips,
  load_vgg,
  perceptual_loss,
)

# torchvision.models.vgg.cfgs
TORCHVISION_CFGS = {
  "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
  "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
# torchvision indices of the taps: lpips' slices (vgg16 [0:4], [4:9], [9:16], [16:23], [23:30]; alexnet [0:2],
# [2:5], [5:8], [8:10], [10:12]) and Long-LRM's perceptual_out_idx [4, 9, 14, 23, 32] on vgg19.
LPIPS_TAP_INDICES = {"vgg": (3, 8, 15, 22, 29), "alex": (1, 4, 7, 9, 11)}
PERCEPTUAL_BLOCK_ENDS = (4, 9, 14, 23, 32)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_MEAN = (123.68, 116.779, 103.939)


def _vgg_features(cfg) -> nn.Sequential:
  """torchvision's `make_layers(cfg, batch_norm=False)` (ReLU not in place, so every output can be kept)."""
  layers, channels = [], 3
  for v in cfg:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    else:
      layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU()]
      channels = v
  return nn.Sequential(*layers)


def _alexnet_features() -> nn.Sequential:
  """torchvision's AlexNet `features`."""
  return nn.Sequential(
    nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
    nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2),
    nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
    nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
    nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2))


class TorchNet(nn.Module):
  """torchvision's VGG / AlexNet key layout; the classifier is shrunk (its keys are what the loader must skip)."""

  def __init__(self, features: nn.Sequential, seed: int):
    super().__init__()
    torch.manual_seed(seed)
    self.features = features
    self.classifier = nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 8), nn.ReLU(),
                                    nn.Dropout(), nn.Linear(8, 10))
    for layer in features:
      if isinstance(layer, nn.Conv2d):  # He init keeps activations O(1) through the depth
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        nn.init.uniform_(layer.bias, -0.1, 0.1)
    self.eval()


class NetLinLayer(nn.Module):
  """lpips' head: Dropout then a bias-free 1x1 conv (keys `model.1.weight`)."""

  def __init__(self, channels: int):
    super().__init__()
    self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))


class ScalingLayer(nn.Module):
  def __init__(self):
    super().__init__()
    self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
    self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])


class TorchHeads(nn.Module):
  """The lin0..lin4 heads (+ the scaling layer's buffers) as in lpips' state_dict; random non-negative weights."""

  def __init__(self, channels, seed: int):
    super().__init__()
    torch.manual_seed(seed)
    self.scaling_layer = ScalingLayer()
    for k, c in enumerate(channels):
      head = NetLinLayer(c)
      head.model[1].weight.data = torch.rand(1, c, 1, 1) / c * 4
      setattr(self, f"lin{k}", head)
    self.eval()


def _to_torch(x) -> torch.Tensor:
  return torch.from_numpy(np.moveaxis(np.asarray(x, np.float32), -1, 1).copy())


def _to_numpy(x: torch.Tensor) -> np.ndarray:
  return np.moveaxis(x.detach().numpy(), 1, -1)


def _images(seed, shape):
  return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
  """{name: (torch reference, path of its .pth)} for vgg16, vgg19, alexnet, and lpips heads for vgg and alex."""
  root = tmp_path_factory.mktemp("perceptual")
  out = {}
  for seed, (name, features) in enumerate([("vgg16", _vgg_features(TORCHVISION_CFGS["vgg16"])),
                                           ("vgg19", _vgg_features(TORCHVISION_CFGS["vgg19"])),
                                           ("alexnet", _alexnet_features())]):
    model = TorchNet(features, seed)
    torch.save(model.state_dict(), root / f"{name}.pth")
    out[name] = (model, root / f"{name}.pth")
  for seed, (net, channels) in enumerate([("vgg", (64, 128, 256, 512, 512)), ("alex", (64, 192, 384, 256, 256))]):
    heads = TorchHeads(channels, 10 + seed)
    torch.save(heads.state_dict(), root / f"lpips_{net}.pth")
    out[f"lpips_{net}"] = (heads, root / f"lpips_{net}.pth")
  return out


def _save_safetensors(state: dict, path):
  safetensors.numpy.save_file({k: v.detach().numpy() for k, v in state.items()}, str(path))
  return path


@pytest.mark.parametrize("variant", ["vgg16", "vgg19"])
def test_vgg_features_match_torchvision_layout(nets, variant):
  reference, path = nets[variant]
  vgg = load_vgg(path, variant)
  images = _images(0, (2, 32, 32, 3))
  ours = vgg(jnp.asarray(images), vgg.layer_names)
  x = _to_torch(images)
  with torch.no_grad():
    for index, layer in enumerate(reference.features):
      x = layer(x)
      _assert_close(ours[vgg.layer_names[index]], _to_numpy(x), f"{variant} features[{index}]")
  if variant == "vgg16":
    assert [vgg.layer_names[i] for i in LPIPS_TAP_INDICES["vgg"]] == list(LPIPS_TAPS["vgg"])
  else:
    assert [vgg.layer_names[i - 1] for i in PERCEPTUAL_BLOCK_ENDS] == list(PerceptualConfig().taps)


def _assert_same_params(a, b):
  flat_a, flat_b = (dict(nnx.to_flat_state(nnx.state(m, nnx.Param))) for m in (a, b))
  assert flat_a.keys() == flat_b.keys()
  for path in flat_a:
    np.testing.assert_array_equal(flat_a[path].get_value(), flat_b[path].get_value(), err_msg=str(path))


def test_safetensors_file_loads_the_same(nets, tmp_path):
  reference, path = nets["vgg16"]
  from_safetensors = load_vgg(_save_safetensors(reference.state_dict(), tmp_path / "vgg16.safetensors"), "vgg16")
  _assert_same_params(load_vgg(path, "vgg16"), from_safetensors)


def _torch_lpips(features, tap_indices, heads, pred, target):
  """The lpips package's LPIPS.forward(pred, target, normalize=True), version 0.1, spatial=False."""
  shift, scale = heads.scaling_layer.shift, heads.scaling_layer.scale

  def taps(x):
    x = ((2 * x - 1) - shift) / scale
    out = []
    for index, layer in enumerate(features[:max(tap_indices) + 1]):
      x = layer(x)
      if index in tap_indices:
        out.append(x)
    return out

  def normalize_tensor(f, eps=1e-10):
    return f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + eps)

  total = 0
  for k, (f0, f1) in enumerate(zip(taps(pred), taps(target))):
    diff = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2
    total = total + getattr(heads, f"lin{k}").model(diff).mean([2, 3], keepdim=True)
  return total[:, 0, 0, 0]


@pytest.mark.parametrize("net,backbone,size", [("vgg", "vgg16", 32), ("alex", "alexnet", 48)])
def test_lpips_matches_reference(nets, net, backbone, size):
  reference, backbone_path = nets[backbone]
  heads, heads_path = nets[f"lpips_{net}"]
  metric = load_lpips(backbone_path, heads_path, net)
  target = _images(2, (3, size, size, 3))
  pred = np.clip(target + 0.2 * _images(3, target.shape) - 0.1, 0, 1)
  with torch.no_grad():
    expected = _torch_lpips(reference.features, LPIPS_TAP_INDICES[net], heads, _to_torch(pred), _to_torch(target))
  ours = metric(jnp.asarray(pred), jnp.asarray(target))
  _assert_close(ours, expected.numpy(), f"LPIPS {net}")
  assert np.all(np.asarray(expected) > 0)
  # leading axes are batch axes
  pred, target = (jnp.asarray(x).reshape(3, 1, size, size, 3) for x in (pred, target))
  _assert_close(metric(pred, target), expected.numpy().reshape(3, 1), f"LPIPS {net} (3, 1) batch")


def test_lpips_heads_from_safetensors(nets, tmp_path):
  heads, heads_path = nets["lpips_vgg"]
  _, backbone_path = nets["vgg16"]
  from_safetensors = load_lpips(backbone_path, _save_safetensors(heads.state_dict(), tmp_path / "vgg.safetensors"))
  _assert_same_params(load_lpips(backbone_path, heads_path), from_safetensors)


def _torch_perceptual(features, pred, target, config: PerceptualConfig):
  """Long-LRM's PerceptualLoss.forward (vgg19 features sliced at perceptual_out_idx), generalised to both inputs."""
  features = nn.Sequential(*[nn.AvgPool2d(kernel_size=2, stride=2) if isinstance(layer, nn.MaxPool2d) and
                             config.pooling == "avg" else layer for layer in features])
  if config.normalization == "imagenet":
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pred, target = (pred - mean) / std, (target - mean) / std
  else:
    mean = torch.tensor(CAFFE_MEAN).view(1, 3, 1, 1)
    pred, target = pred * 255.0 - mean, target * 255.0 - mean
  loss = torch.mean(torch.abs(pred - target))
  for start, end, weight in zip((0,) + PERCEPTUAL_BLOCK_ENDS, PERCEPTUAL_BLOCK_ENDS, config.layer_weights):
    pred, target = features[start:end](pred), features[start:end](target)
    loss = loss + weight * torch.mean(torch.abs(pred - target))
  return loss * config.scale


@pytest.mark.parametrize("config", [PerceptualConfig(), PerceptualConfig.matconvnet()], ids=["imagenet", "matconvnet"])
def test_perceptual_loss_matches_reference(nets, config):
  reference, path = nets["vgg19"]
  vgg = load_vgg(path, "vgg19")
  target = _images(5, (2, 32, 32, 3))
  pred = np.clip(target + 0.3 * _images(6, target.shape) - 0.15, 0, 1)
  pred_torch = _to_torch(pred).requires_grad_(True)
  expected = _torch_perceptual(reference.features, pred_torch, _to_torch(target), config)
  expected.backward()
  loss_fn = PerceptualLoss(vgg, config)
  loss, grad = jax.jit(jax.value_and_grad(lambda p, t: loss_fn(p, t)))(jnp.asarray(pred), jnp.asarray(target))
  _assert_close(loss, expected.detach().numpy(), f"perceptual loss {config.normalization}")
  _assert_close(grad, _to_numpy(pred_torch.grad), f"perceptual loss gradient {config.normalization}", rel=1e-3)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_perceptual_loss_batch_axes(nets):
  vgg = load_vgg(nets["vgg19"][1], "vgg19")
  target = jnp.asarray(_images(5, (2, 32, 32, 3)))
  pred = jnp.asarray(_images(6, target.shape))
  loss = perceptual_loss(vgg, pred, target)
  np.testing.assert_allclose(perceptual_loss(vgg, pred[None], target[None]), loss, rtol=1e-6)
  assert float(perceptual_loss(vgg, target, target)) == 0.0


# ----------------------------------------------------------------------------------------------- errors


def _state_dict(nets, name):
  return {k: v.clone() for k, v in nets[name][0].state_dict().items()}


def test_missing_and_misshaped_keys_are_named(nets, tmp_path):
  state = _state_dict(nets, "vgg16")
  del state["features.28.bias"]
  state["features.2.weight"] = state["features.2.weight"][:, :32]
  state["features.99.weight"] = torch.zeros(3)
  path = tmp_path / "broken_vgg16.pth"
  torch.save(state, path)
  with pytest.raises(InputFileError) as info:
    load_vgg(path, "vgg16")
  message = str(info.value)
  assert str(path) in message
  assert "features.28.bias (512,)" in message  # missing, with the expected shape
  assert "features.2.weight: (64, 32, 3, 3) in the file, expected (64, 64, 3, 3)" in message
  assert "features.99.weight" in message  # unexpected
  assert "classifier" not in message  # the classifier is ignored


def test_wrong_variant_is_named(nets, tmp_path):
  path = _save_safetensors(nets["vgg16"][0].state_dict(), tmp_path / "vgg16.safetensors")
  with pytest.raises(InputFileError, match=r"vgg16\.safetensors: not a torchvision vgg19 state_dict \(it looks "
                                           r"like a vgg16 file\)"):
    load_vgg(path, "vgg19")


def test_bad_lpips_heads_are_named(nets, tmp_path):
  state = _state_dict(nets, "lpips_vgg")
  state["lin3.model.1.weight"] = state["lin3.model.1.weight"][:, :256]
  state["net.slice1.0.weight"] = torch.zeros(1)
  path = tmp_path / "heads.pth"
  torch.save(state, path)
  with pytest.raises(InputFileError) as info:
    load_lpips(nets["vgg16"][1], path)
  message = str(info.value)
  assert f"{path}: not a lpips v0.1 'vgg' heads state_dict" in message
  assert "lin3.model.1.weight: (1, 256, 1, 1) in the file, expected (1, 512, 1, 1)" in message
  assert "net.slice1.0.weight" in message
  with pytest.raises(InputFileError, match="not a torchvision alexnet state_dict"):
    load_lpips(nets["vgg16"][1], nets["lpips_alex"][1], "alex")


def test_unreadable_files(tmp_path, monkeypatch):
  with pytest.raises(InputFileError, match="nothing.pth: weights file not found"):
    load_vgg(tmp_path / "nothing.pth")
  (tmp_path / "garbage.pth").write_bytes(b"not a pickle")
  with pytest.raises(InputFileError, match="garbage.pth: cannot read it as a PyTorch state_dict"):
    load_vgg(tmp_path / "garbage.pth")
  (tmp_path / "weights.npz").write_bytes(b"")
  with pytest.raises(InputFileError, match="unknown weights format '.npz'"):
    load_vgg(tmp_path / "weights.npz")
  torch.save([torch.zeros(1)], tmp_path / "list.pth")
  with pytest.raises(InputFileError, match="expected a state_dict"):
    load_vgg(tmp_path / "list.pth")
  monkeypatch.setitem(sys.modules, "torch", None)  # torch not installed: say how to get a safetensors file
  with pytest.raises(WonderlandError, match="needs torch.*safetensors"):
    load_vgg(tmp_path / "list.pth")


def test_unknown_taps_and_configs():
  vgg = nnx.eval_shape(lambda: VGG("vgg16", rngs=nnx.Rngs(0)))
  with pytest.raises(WonderlandError, match="no layer 'relu5_4'"):
    vgg(jnp.zeros((1, 32, 32, 3)), ("relu5_4",))
  with pytest.raises(WonderlandError, match="unknown VGG variant"):
    VGG("vgg11", rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match="5 taps but 1 layer weights"):
    PerceptualConfig(layer_weights=(1.0,))
