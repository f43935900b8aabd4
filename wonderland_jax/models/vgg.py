"""The perceptual networks: torchvision's VGG-16 / VGG-19 (and AlexNet) feature stacks in Flax NNX, channels-last,
with LPIPS and the VGG-19 perceptual loss built on them.

    vgg = load_vgg("vgg19-dcbb9e9d.pth", "vgg19")               # a torchvision state_dict (.pth or .safetensors)
    feats = vgg(imagenet_normalize(images), ("relu1_2", "relu3_2"))   # images (B, H, W, 3) in [0, 1] -> dict
    loss = perceptual_loss(vgg, pred, target)                     # scalar, differentiable, jittable

    metric = load_lpips("vgg16-397923af.pth", "lpips_v0.1_vgg.pth")   # lpips package's v0.1 'vgg' heads
    distance = metric(pred, target)                                # (...,) per image pair, inputs in [0, 1]

`features` is an `nnx.List` indexed exactly like torchvision's `features` nn.Sequential: convolutions at the
indices torchvision gives them, None at the ReLUs and pools. A torchvision key `features.{i}.weight` (O, I, kh, kw)
is our `features[i].kernel` (kh, kw, I, O) and `features.{i}.bias` our `features[i].bias` (`VGG_RULES`); the
classifier's keys are ignored. Layers are named as in the VGG paper: `conv{block}_{k}`, `relu{block}_{k}`,
`pool{block}` (AlexNet: `conv{k}`, `relu{k}`, `pool{k}`); `__call__` returns the outputs of the named layers
and stops after the deepest one asked for.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wonderland_jax.convert.rules import Rule
from wonderland_jax.convert.state_dict import check_keys, load_into, open_weights
from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.abstract import abstract_build

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# MatConvNet's / Caffe's VGG `averageImage` (RGB, 0..255): the mean the original VGG weights expect.
CAFFE_MEAN = (123.68, 116.779, 103.939)

# torchvision's `cfgs`: ints are 3x3 convolutions (padding 1) + ReLU, "M" a 2x2 max pool (stride 2).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
  "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),  # 'D'
  "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
            "M"),  # 'E'
}

VGG_RULES = (
  Rule(r"features\.(\d+)\.weight", r"features.\1.kernel", "conv2d"),
  Rule(r"features\.(\d+)\.bias", r"features.\1.bias"),
  Rule(r"classifier\..*", None),  # the ImageNet classifier: not part of the feature extractor
)
# The lpips package's heads (`lpips/weights/v0.1/{net}.pth`): `lin{k}.model.1.weight` (1, C, 1, 1) (model.0 is a
# Dropout). The ScalingLayer's constant buffers, in a state_dict saved from an `lpips.LPIPS`, equal ours: ignored.
LPIPS_HEAD_RULES = (
  Rule(r"lin(\d+)\.model\.1\.weight", r"lins.\1.kernel", "conv2d"),
  Rule(r"scaling_layer\..*", None),
)
IGNORED_KEYS = {"vgg": ("classifier.",), "heads": ("scaling_layer.",)}


# ----------------------------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class Layer:
  """One entry of a torchvision `features` nn.Sequential. kind: 'conv' | 'relu' | 'pool'; for a conv:
  in/out channels, kernel size, stride and (symmetric) padding; for a pool: window and stride."""

  name: str
  kind: str
  in_channels: int = 0
  out_channels: int = 0
  kernel: int = 0
  stride: int = 1
  padding: int = 0


def vgg_layers(variant: str) -> tuple[Layer, ...]:
  """The layers of torchvision's `vgg16` / `vgg19` `features`, in index order."""
  if variant not in VGG_CONFIGS:
    raise WonderlandError(f"unknown VGG variant {variant!r}; use one of {', '.join(VGG_CONFIGS)}")
  layers, channels, block, k = [], 3, 1, 1
  for entry in VGG_CONFIGS[variant]:
    if entry == "M":
      layers.append(Layer(f"pool{block}", "pool", kernel=2, stride=2))
      block, k = block + 1, 1
      continue
    layers.append(Layer(f"conv{block}_{k}", "conv", channels, entry, kernel=3, padding=1))
    layers.append(Layer(f"relu{block}_{k}", "relu"))
    channels, k = entry, k + 1
  return tuple(layers)


def alexnet_layers() -> tuple[Layer, ...]:
  """The layers of torchvision's `alexnet` `features`, in index order."""
  convs = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
  layers = []
  for k, (cin, cout, kernel, stride, padding) in enumerate(convs, 1):
    layers.append(Layer(f"conv{k}", "conv", cin, cout, kernel, stride, padding))
    layers.append(Layer(f"relu{k}", "relu"))
    if k in (1, 2, 5):
      layers.append(Layer(f"pool{k}", "pool", kernel=3, stride=2))
  return tuple(layers)


def torch_shapes(layers: Sequence[Layer]) -> dict[str, tuple[int, ...]]:
  """The torchvision state_dict keys of a `features` stack with these layers and their PyTorch-layout shapes."""
  shapes = {}
  for i, layer in enumerate(layers):
    if layer.kind == "conv":
      shapes[f"features.{i}.weight"] = (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel)
      shapes[f"features.{i}.bias"] = (layer.out_channels,)
  return shapes


def _pool(x: jax.Array, window: int, stride: int, pooling: str) -> jax.Array:
  """torch's MaxPool2d / AvgPool2d without padding (floor mode) on (B, H, W, C)."""
  dims, strides = (1, window, window, 1), (1, stride, stride, 1)
  if pooling == "max":
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "VALID")
  if pooling == "avg":
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID") / (window * window)
  raise WonderlandError(f"unknown pooling {pooling!r}; use 'max' or 'avg'")


class FeatureStack(nnx.Module):
  """A torchvision `features` stack (see the module docstring): `features[i]` is an `nnx.Conv` for the i-th
  layer if it is a convolution, else None. `dtype`: compute dtype of the convolutions (params stay float32);
  `precision`: their `jax.lax.Precision` (None: the backend default, which is reduced on TPU / TF32 GPUs)."""

  def __init__(self, layers: Sequence[Layer], *, dtype: Any = None, precision: Any = None, rngs: nnx.Rngs):
    self.layers = tuple(layers)
    self.features = nnx.List([
      nnx.Conv(layer.in_channels, layer.out_channels, (layer.kernel, layer.kernel), strides=layer.stride,
               padding=[(layer.padding, layer.padding)] * 2, dtype=dtype, precision=precision, rngs=rngs)
      if layer.kind == "conv" else None for layer in self.layers])

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(layer.name for layer in self.layers)

  def channels(self, name: str) -> int:
    """Number of channels of the output of layer `name`."""
    channels = 3
    for layer in self.layers[:self._index(name) + 1]:
      channels = layer.out_channels or channels
    return channels

  def torch_shapes(self) -> dict[str, tuple[int, ...]]:
    """The torchvision state_dict keys of the feature stack and their (PyTorch-layout) shapes."""
    return torch_shapes(self.layers)

  def _index(self, name: str) -> int:
    names = self.layer_names
    if name not in names:
      raise WonderlandError(f"{type(self).__name__} has no layer {name!r}; its layers: {', '.join(names)}")
    return names.index(name)

  def __call__(self, x: jax.Array, taps: Sequence[str], *, pooling: str = "max") -> dict[str, jax.Array]:
    """x (B, H, W, 3), already normalised for the weights (e.g. `imagenet_normalize`) -> {tap: (B, h, w, C)}.

    taps: layer names (`layer_names`); the stack runs up to the deepest. pooling: 'max' (torchvision) or 'avg'
    (every max pool replaced by an average pool of the same window, as Chen & Koltun's perceptual loss does).
    """
    if isinstance(taps, str):
      taps = (taps,)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise WonderlandError(f"{type(self).__name__} input must have shape (B, H, W, 3), got {x.shape}")
    if not taps:
      raise WonderlandError(f"{type(self).__name__}: no taps asked for; its layers: {', '.join(self.layer_names)}")
    last = max(self._index(tap) for tap in taps)
    wanted, out = set(taps), {}
    for layer, conv in zip(self.layers[:last + 1], self.features):
      if layer.kind == "conv":
        x = conv(x)
      elif layer.kind == "relu":
        x = jax.nn.relu(x)
      else:
        x = _pool(x, layer.kernel, layer.stride, pooling)
      if layer.name in wanted:
        out[layer.name] = x
    return out


class VGG(FeatureStack):
  """torchvision's VGG-16 ('vgg16', cfg 'D') or VGG-19 ('vgg19', cfg 'E') `features`; see `FeatureStack`."""

  def __init__(self, variant: str = "vgg19", *, dtype: Any = None, precision: Any = None, rngs: nnx.Rngs):
    super().__init__(vgg_layers(variant), dtype=dtype, precision=precision, rngs=rngs)
    self.variant = variant


class AlexNet(FeatureStack):
  """torchvision's AlexNet `features` (LPIPS net='alex'); see `FeatureStack`."""

  def __init__(self, *, dtype: Any = None, precision: Any = None, rngs: nnx.Rngs):
    super().__init__(alexnet_layers(), dtype=dtype, precision=precision, rngs=rngs)
    self.variant = "alexnet"


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """(..., 3) RGB in [0, 1] -> (x - mean) / std with ImageNet's statistics, the input torchvision's weights
  expect."""
  return (images - jnp.asarray(IMAGENET_MEAN, images.dtype)) / jnp.asarray(IMAGENET_STD, images.dtype)


def caffe_normalize(images: jax.Array) -> jax.Array:
  """(..., 3) RGB in [0, 1] -> 255 x - `CAFFE_MEAN`, the input the original (Caffe / MatConvNet) VGG weights
  expect."""
  return images * 255.0 - jnp.asarray(CAFFE_MEAN, images.dtype)


def _flatten_pair(pred: jax.Array, target: jax.Array, what: str) -> tuple[jax.Array, tuple[int, ...]]:
  """Two (..., H, W, 3) batches -> one (2N, H, W, 3) float32 batch (pred first) and the leading shape."""
  if pred.shape != target.shape:
    raise WonderlandError(f"{what}: pred and target shapes differ: {pred.shape} vs {target.shape}")
  if pred.ndim < 3 or pred.shape[-1] != 3:
    raise WonderlandError(f"{what}: images must have shape (..., H, W, 3), got {pred.shape}")
  lead = pred.shape[:-3]
  both = jnp.concatenate([jnp.reshape(pred, (-1, *pred.shape[-3:])), jnp.reshape(target, (-1, *pred.shape[-3:]))])
  return both.astype(jnp.float32), lead


# ----------------------------------------------------------------------------------------------- LPIPS

# The lpips package's `ScalingLayer` (applied to inputs in [-1, 1]) and its taps per backbone.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_TAPS = {
  "vgg": ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
  "alex": ("relu1", "relu2", "relu3", "relu4", "relu5"),
}
LPIPS_EPS = 1e-10


class LinearHead(nnx.Module):
  """lpips' `NetLinLayer`: a bias-free 1x1 convolution C -> 1; `kernel` (1, 1, C, 1)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (1, 1, channels, 1)) / channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, h, w, C) -> (B, h, w)."""
    return jnp.einsum("bhwc,c->bhw", x, self.kernel[...][0, 0, :, 0], precision=jax.lax.Precision.HIGHEST)


class LPIPSHeads(nnx.Module):
  """The five linear heads `lins[k]` (the lpips package's `lin{k}`)."""

  def __init__(self, channels: Sequence[int], *, rngs: nnx.Rngs):
    self.lins = nnx.List([LinearHead(c, rngs=rngs) for c in channels])

  def torch_shapes(self) -> dict[str, tuple[int, ...]]:
    return {f"lin{k}.model.1.weight": (1, lin.kernel.shape[2], 1, 1) for k, lin in enumerate(self.lins)}


def _unit_normalize(features: jax.Array) -> jax.Array:
  """lpips' `normalize_tensor`: x / (||x||_channels + 1e-10); the norm's gradient is taken as 0 where x = 0
  (torch's would be NaN there), the value is the same."""
  squared = jnp.sum(features * features, axis=-1, keepdims=True)
  positive = squared > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)
  return features / (norm + LPIPS_EPS)


class LPIPS(nnx.Module):
  """LPIPS v0.1 (Zhang et al. 2018) with the `lpips` package's semantics (`lpips.LPIPS(net=..., version='0.1')`
  called with `normalize=True`): inputs in [0, 1] go to [-1, 1], through the ScalingLayer ((x - shift) / scale),
  the backbone (`net`: torchvision VGG-16 for 'vgg', AlexNet for 'alex'); at each tap (`LPIPS_TAPS`) the
  features are unit-normalised over channels (eps 1e-10), their squared difference goes through the bias-free
  1x1 head `heads.lins[k]`, is averaged over space, and the five layers are summed."""

  def __init__(self, net: str = "vgg", *, dtype: Any = None, precision: Any = None, rngs: nnx.Rngs):
    if net not in LPIPS_TAPS:
      raise WonderlandError(f"unknown LPIPS net {net!r}; use one of {', '.join(LPIPS_TAPS)}")
    self.net_name = net
    self.taps = LPIPS_TAPS[net]
    self.net = (VGG("vgg16", dtype=dtype, precision=precision, rngs=rngs) if net == "vgg"
                else AlexNet(dtype=dtype, precision=precision, rngs=rngs))
    self.heads = LPIPSHeads([self.net.channels(tap) for tap in self.taps], rngs=rngs)

  def layers(self, pred: jax.Array, target: jax.Array) -> jax.Array:
    """pred, target (..., H, W, 3) in [0, 1] -> per-layer distances (..., 5), float32."""
    both, lead = _flatten_pair(pred, target, "LPIPS")
    both = ((2.0 * both - 1.0) - jnp.asarray(LPIPS_SHIFT)) / jnp.asarray(LPIPS_SCALE)
    features = self.net(both, self.taps)
    per_layer = []
    for tap, head in zip(self.taps, self.heads.lins):
      normalized = _unit_normalize(features[tap].astype(jnp.float32))
      pred_f, target_f = jnp.split(normalized, 2)
      per_layer.append(jnp.mean(head((pred_f - target_f) ** 2), axis=(1, 2)))
    return jnp.stack(per_layer, axis=-1).reshape(*lead, len(self.taps))

  def __call__(self, pred: jax.Array, target: jax.Array) -> jax.Array:
    """pred, target (..., H, W, 3) in [0, 1] -> LPIPS distance (...,), float32."""
    return jnp.sum(self.layers(pred, target), axis=-1)


# ----------------------------------------------------------------------------------------------- perceptual loss

# Chen & Koltun's layers and weights; see `PerceptualConfig`.
CHEN_KOLTUN_TAPS = ("relu1_2", "relu2_2", "relu3_2", "relu4_2", "relu5_2")
CHEN_KOLTUN_WEIGHTS = (1 / 2.6, 1 / 4.8, 1 / 3.7, 1 / 5.6, 10 / 1.5)


@dataclasses.dataclass(frozen=True)
class PerceptualConfig:
  """The VGG-19 perceptual loss of Chen & Koltun, "Photographic Image Synthesis with Cascaded Refinement
  Networks" (ICCV 2017), cited by GS-LRM and implemented in Long-LRM's and LVSM's code:

      loss = scale * (pixel_weight * mean|n(pred) - n(target)|
                      + sum_l layer_weights[l] * mean|f_l(pred) - f_l(target)|)

  n: the input normalisation, f_l: the VGG-19 activations at `taps[l]`, means over batch, space and channels.

  taps / layer_weights: relu1_2, relu2_2, relu3_2, relu4_2, relu5_2 (Chen & Koltun's `conv{k}_2`, which include
    the ReLU; torchvision `features` slices ending at 4, 9, 14, 23, 32, Long-LRM's `perceptual_out_idx`) with
    1/2.6, 1/4.8, 1/3.7, 1/5.6, 10/1.5: the per-layer normalisers of Chen & Koltun's released code, relu5_2's
    multiplied by 10 (Long-LRM's `perceptual_out_weights` [0.3846, 0.2083, 0.2703, 0.1786, 6.6667]).
  normalization: 'imagenet' ((x - mean) / std, the input torchvision's VGG-19 weights were trained on) or
    'caffe' (255 x - the VGG mean, what the original MatConvNet `imagenet-vgg-verydeep-19` weights expect).
  pooling: 'max' (torchvision's network) or 'avg' (Chen & Koltun's code replaces the max pools by average pools).
  scale: an overall factor; the original puts the loss back on a [0, 1] scale with 1/255.

  The default keeps Chen & Koltun's layers and weights and feeds torchvision's `vgg19` (IMAGENET1K_V1) weights
  what they were trained on: ImageNet-normalised input, max pools. `PerceptualConfig.matconvnet()` is the exact
  original (Chen & Koltun's TensorFlow code, LVSM) for the MatConvNet weights converted to torchvision's key
  layout (e.g. Long-LRM's `model/matconvnet_vgg19.pt`; Long-LRM subtracts 255 x ImageNet's mean instead of the
  VGG mean, within 0.5 of it). The two weight sets give losses of different magnitudes: a loss weight tuned for
  one does not carry over.
  """

  taps: tuple[str, ...] = CHEN_KOLTUN_TAPS
  layer_weights: tuple[float, ...] = CHEN_KOLTUN_WEIGHTS
  pixel_weight: float = 1.0
  normalization: str = "imagenet"
  pooling: str = "max"
  scale: float = 1.0

  def __post_init__(self):
    if len(self.taps) != len(self.layer_weights):
      raise WonderlandError(f"PerceptualConfig: {len(self.taps)} taps but {len(self.layer_weights)} layer weights")
    if self.normalization not in ("imagenet", "caffe"):
      raise WonderlandError(f"PerceptualConfig: normalization {self.normalization!r}; use 'imagenet' or 'caffe'")
    if self.pooling not in ("max", "avg"):
      raise WonderlandError(f"PerceptualConfig: pooling {self.pooling!r}; use 'max' or 'avg'")

  @classmethod
  def matconvnet(cls) -> PerceptualConfig:
    """Chen & Koltun's original: [0, 255] inputs less the VGG mean, average pooling, the sum divided by 255."""
    return cls(normalization="caffe", pooling="avg", scale=1 / 255)


def perceptual_loss(vgg: FeatureStack, pred: jax.Array, target: jax.Array,
                    config: PerceptualConfig = PerceptualConfig()) -> jax.Array:
  """The perceptual loss (see `PerceptualConfig`) of pred vs target, (..., H, W, 3) in [0, 1] -> scalar float32.

  `vgg` is usually VGG-19 (`load_vgg(path, "vgg19")`). Differentiable in pred (and target) and jittable; the
  VGG params are whatever `vgg` holds (keep them out of the optimizer).
  """
  both, _ = _flatten_pair(pred, target, "perceptual_loss")
  normalize = imagenet_normalize if config.normalization == "imagenet" else caffe_normalize
  both = normalize(both)
  features = vgg(both, config.taps, pooling=config.pooling)

  def l1(x):
    first, second = jnp.split(x.astype(jnp.float32), 2)
    return jnp.mean(jnp.abs(first - second))

  loss = config.pixel_weight * l1(both)
  for tap, weight in zip(config.taps, config.layer_weights):
    loss = loss + weight * l1(features[tap])
  return config.scale * loss


class PerceptualLoss(nnx.Module):
  """`perceptual_loss` as a module holding its network: `PerceptualLoss(load_vgg(path), config)(pred, target)`."""

  def __init__(self, vgg: FeatureStack, config: PerceptualConfig = PerceptualConfig()):
    self.vgg = vgg
    self.config = config

  def __call__(self, pred: jax.Array, target: jax.Array) -> jax.Array:
    return perceptual_loss(self.vgg, pred, target, self.config)


# ----------------------------------------------------------------------------------------------- loading


def _variant_hint(source, variant: str) -> str:
  """' (it looks like a vgg16 file)' when the file's conv keys are exactly another variant's."""
  keys = {key for key in source.keys() if key.startswith("features.")}
  for other in VGG_CONFIGS:
    if other != variant and keys == set(torch_shapes(vgg_layers(other))):
      return f" (it looks like a {other} file)"
  return ""


def load_vgg(path: str | os.PathLike, variant: str = "vgg19", *, dtype: Any = None,
             precision: Any = None) -> VGG:
  """A `VGG` ('vgg16' or 'vgg19') from a torchvision state_dict file (`vgg19-dcbb9e9d.pth`, or the same keys in
  .safetensors). Params are float32; `dtype` / `precision`: see `FeatureStack`. The classifier's keys are
  ignored; a missing, unexpected or mis-shaped `features.*` key raises `InputFileError` listing them all."""
  model = abstract_build(lambda: VGG(variant, dtype=dtype, precision=precision, rngs=nnx.Rngs(0)))
  source = open_weights(path)
  check_keys(source, model.torch_shapes(), IGNORED_KEYS["vgg"], f"torchvision {variant}",
             _variant_hint(source, variant))
  load_into(model, source, VGG_RULES, jnp.float32)
  return model


def load_lpips(backbone_path: str | os.PathLike, heads_path: str | os.PathLike, net: str = "vgg", *,
               precision: Any = jax.lax.Precision.HIGHEST) -> LPIPS:
  """An `LPIPS` metric from torchvision backbone weights (net 'vgg': `vgg16-397923af.pth`; 'alex':
  `alexnet-owt-7be5be79.pth`) and the lpips package's heads (`lpips/weights/v0.1/{net}.pth`: `lin{k}.model.1.weight`
  (1, C, 1, 1)), each a .pth state_dict or .safetensors. Convolutions run at full float32 precision by default
  (a metric should not change with the backend's matmul precision). `InputFileError` names the file and keys
  at fault."""
  model = abstract_build(lambda: LPIPS(net, precision=precision, rngs=nnx.Rngs(0)))
  backbone = open_weights(backbone_path)
  what = "torchvision vgg16" if net == "vgg" else "torchvision alexnet"
  check_keys(backbone, model.net.torch_shapes(), IGNORED_KEYS["vgg"], what,
             _variant_hint(backbone, "vgg16") if net == "vgg" else "")
  heads = open_weights(heads_path)
  check_keys(heads, model.heads.torch_shapes(), IGNORED_KEYS["heads"], f"lpips v0.1 '{net}' heads")
  load_into(model.net, backbone, VGG_RULES, jnp.float32)
  load_into(model.heads, heads, LPIPS_HEAD_RULES, jnp.float32)
  return model
