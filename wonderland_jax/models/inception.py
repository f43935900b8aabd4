"""The FID feature network: pytorch-fid's "FID Inception" (Inception-v3 with TensorFlow's 2015-12-05 weights) in
Flax NNX, channels-last.

    model = load_fid_inception("pt_inception-2015-12-05-6726825d.pth")   # pytorch-fid's weights (.pth/.safetensors)
    features = model(images)                       # images (B, H, W, 3) in [0, 1] -> pool3 features (B, 2048)
    features = fid_features(model, images_np, batch_size=50)    # wonderland_jax.eval.features: (N, 2048) numpy
    fid = frechet_distance(fid_statistics(model, real), fid_statistics(model, fake))   # eval.frechet, eval.features

The network is torchvision's `Inception3` with pytorch-fid's patches (`fid_inception_v3`): the average pools of
Mixed_5b..d (FIDInceptionA), Mixed_6b..e (FIDInceptionC) and Mixed_7b (FIDInceptionE_1) leave the zero padding out
of the mean (TensorFlow's `count_include_pad=False`), and Mixed_7c (FIDInceptionE_2) max-pools its pool branch.
Input pipeline as pytorch-fid's `InceptionV3` (resize_input, normalize_input): bilinear resize to 299 x 299
(`F.interpolate(align_corners=False)`, no antialiasing), then 2 x - 1. The features FID uses are the 2048-d
output of the final adaptive average pool ("pool3"); the 1008-way `fc` logits are available as `logits`.

Modules carry torchvision's names, so a state_dict key maps onto our path by its suffix alone (`INCEPTION_RULES`):
`Mixed_6b.branch7x7_2.conv.weight` (O, I, 1, 7) is `Mixed_6b.branch7x7_2.conv.kernel` (1, 7, I, O);
`<conv>.bn.{weight, bias, running_mean, running_var}` are `<conv>.bn.{scale, bias, mean, var}`; `fc.weight`
(1008, 2048) is `fc.kernel` (2048, 1008). `num_batches_tracked` and `AuxLogits.*` (in torchvision's own inception
weights; pytorch-fid builds its net without them) are ignored. The network only ever runs in eval mode: the
BatchNorm statistics are loaded as `nnx.Param`s with the rest, and never updated.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.convert.rules import Rule
from wonderland_jax.convert.state_dict import check_keys, load_into, open_weights
from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.abstract import abstract_build
from wonderland_jax.nn.batch_norm import FrozenBatchNorm

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299  # pytorch-fid resizes every image to 299 x 299
MIN_INPUT_SIZE = 75  # the smallest side the stem and the two reductions leave at least 1 x 1
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # TensorFlow's 2015-12-05 graph: 1000 ImageNet classes + 8 unused
BN_EPS = 1e-3

INCEPTION_RULES = (
  Rule(r"AuxLogits\..*", None),  # torchvision's auxiliary classifier: not part of the FID network (first: it
  # has conv / bn / fc keys of its own)
  Rule(r"(.+)\.conv\.weight", r"\1.conv.kernel", "conv2d"),
  Rule(r"(.+)\.bn\.weight", r"\1.bn.scale"),
  Rule(r"(.+)\.bn\.bias", r"\1.bn.bias"),
  Rule(r"(.+)\.bn\.running_mean", r"\1.bn.mean"),
  Rule(r"(.+)\.bn\.running_var", r"\1.bn.var"),
  Rule(r"(.+)\.bn\.num_batches_tracked", None),
  Rule(r"fc\.weight", r"fc.kernel", "linear"),
  Rule(r"fc\.bias", r"fc.bias"),
)
IGNORED_PREFIXES = ("AuxLogits.",)
# our param name -> torchvision's, for `torch_shapes`
_TORCH_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


# ----------------------------------------------------------------------------------------------- layers


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nnx.Module):
  """torchvision's `BasicConv2d`: a bias-free convolution with torch's explicit (symmetric) padding, BatchNorm
  (eps 0.001, eval mode) and ReLU. kernel, stride, padding: an int or (height, width)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int], *,
               stride: int = 1, padding: int | tuple[int, int] = 0, dtype: Any = None, precision: Any = None,
               rngs: nnx.Rngs):
    pad_h, pad_w = _pair(padding)
    self.conv = nnx.Conv(in_channels, out_channels, _pair(kernel), strides=stride,
                         padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False, dtype=dtype,
                         precision=precision, rngs=rngs)
    self.bn = FrozenBatchNorm(out_channels, BN_EPS)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, in_channels) -> (B, H', W', out_channels)."""
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """torch's `max_pool2d` (floor mode; padding counts as -inf) on (B, H, W, C)."""
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, np.array(-np.inf, x.dtype), jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pad)


def avg_pool_same(x: jax.Array) -> jax.Array:
  """torch's `avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)` on (B, H, W, C) -> (B, H, W, C):
  each output is the mean of the input pixels inside its 3 x 3 window (4 at corners, 6 along edges)."""
  _, height, width, _ = x.shape
  sums = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))

  def counts(n):
    index = np.arange(n)
    return np.minimum(index + 1, n - 1) - np.maximum(index - 1, 0) + 1

  return sums / jnp.asarray(np.outer(counts(height), counts(width))[None, :, :, None], x.dtype)


def _concat(*branches: jax.Array) -> jax.Array:
  return jnp.concatenate(branches, axis=-1)


ConvFactory = Callable[..., BasicConv2d]


class InceptionA(nnx.Module):
  """pytorch-fid's `FIDInceptionA` (Mixed_5b..d): (B, H, W, in) -> (B, H, W, 224 + pool_features)."""

  def __init__(self, in_channels: int, pool_features: int, conv: ConvFactory):
    self.branch1x1 = conv(in_channels, 64, 1)
    self.branch5x5_1 = conv(in_channels, 48, 1)
    self.branch5x5_2 = conv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = conv(in_channels, 64, 1)
    self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
    self.branch_pool = conv(in_channels, pool_features, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    return _concat(self.branch1x1(x),
                   self.branch5x5_2(self.branch5x5_1(x)),
                   self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                   self.branch_pool(avg_pool_same(x)))


class InceptionB(nnx.Module):
  """torchvision's `InceptionB` (Mixed_6a), a grid reduction: (B, H, W, in) -> (B, h, w, 480 + in),
  h = (H - 3) // 2 + 1."""

  def __init__(self, in_channels: int, conv: ConvFactory):
    self.branch3x3 = conv(in_channels, 384, 3, stride=2)
    self.branch3x3dbl_1 = conv(in_channels, 64, 1)
    self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    return _concat(self.branch3x3(x),
                   self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                   max_pool(x, 3, 2))


class InceptionC(nnx.Module):
  """pytorch-fid's `FIDInceptionC` (Mixed_6b..e), factorised 7 x 7 convolutions: (B, H, W, in) -> (B, H, W, 768)."""

  def __init__(self, in_channels: int, channels_7x7: int, conv: ConvFactory):
    c7 = channels_7x7
    self.branch1x1 = conv(in_channels, 192, 1)
    self.branch7x7_1 = conv(in_channels, c7, 1)
    self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = conv(in_channels, c7, 1)
    self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = conv(in_channels, 192, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    branch7x7dbl = self.branch7x7dbl_1(x)
    for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
      branch7x7dbl = layer(branch7x7dbl)
    return _concat(self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(avg_pool_same(x)))


class InceptionD(nnx.Module):
  """torchvision's `InceptionD` (Mixed_7a), a grid reduction: (B, H, W, in) -> (B, h, w, 512 + in),
  h = (H - 3) // 2 + 1."""

  def __init__(self, in_channels: int, conv: ConvFactory):
    self.branch3x3_1 = conv(in_channels, 192, 1)
    self.branch3x3_2 = conv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = conv(in_channels, 192, 1)
    self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

  def __call__(self, x: jax.Array) -> jax.Array:
    branch7x7x3 = self.branch7x7x3_1(x)
    for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      branch7x7x3 = layer(branch7x7x3)
    return _concat(self.branch3x3_2(self.branch3x3_1(x)), branch7x7x3, max_pool(x, 3, 2))


class InceptionE(nnx.Module):
  """pytorch-fid's `FIDInceptionE_1` (Mixed_7b, pool 'avg': average without the padding) or `FIDInceptionE_2`
  (Mixed_7c, pool 'max': 3 x 3 max pool, stride 1, padding 1): (B, H, W, in) -> (B, H, W, 2048)."""

  def __init__(self, in_channels: int, pool: str, conv: ConvFactory):
    if pool not in ("avg", "max"):
      raise WonderlandError(f"InceptionE: pool {pool!r}; use 'avg' or 'max'")
    self.pool = pool
    self.branch1x1 = conv(in_channels, 320, 1)
    self.branch3x3_1 = conv(in_channels, 384, 1)
    self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = conv(in_channels, 448, 1)
    self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = conv(in_channels, 192, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = self.branch3x3_1(x)
    branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = avg_pool_same(x) if self.pool == "avg" else max_pool(x, 3, 1, padding=1)
    return _concat(self.branch1x1(x),
                   self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3),
                   self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl),
                   self.branch_pool(pooled))


# ----------------------------------------------------------------------------------------------- the network


def preprocess(images: jax.Array, *, resize: bool = True, normalize: bool = True) -> jax.Array:
  """pytorch-fid's input pipeline: images (B, H, W, 3) in [0, 1] -> (B, 299, 299, 3) float32 in [-1, 1].

  resize: bilinear resize to 299 x 299 without antialiasing (torch's `F.interpolate(mode='bilinear',
  align_corners=False)`, up or down); normalize: 2 x - 1.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise WonderlandError(f"FID Inception: images must have shape (B, H, W, 3), got {images.shape}")
  x = jnp.asarray(images, jnp.float32)
  if resize and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (x.shape[0], INPUT_SIZE, INPUT_SIZE, 3), method="bilinear", antialias=False)
  return 2.0 * x - 1.0 if normalize else x


class FIDInception(nnx.Module):
  """pytorch-fid's FID Inception-v3 (see the module docstring), attributes named as torchvision's `Inception3`.

  `dtype`: compute dtype of the convolutions (params stay float32); `precision`: their `jax.lax.Precision`
  (None: the backend default; `load_fid_inception` asks for HIGHEST, a metric should not depend on the backend's
  matmul precision).
  """

  def __init__(self, *, num_classes: int = NUM_CLASSES, dtype: Any = None, precision: Any = None,
               rngs: nnx.Rngs):
    conv = functools.partial(BasicConv2d, dtype=dtype, precision=precision, rngs=rngs)
    self.Conv2d_1a_3x3 = conv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = conv(32, 32, 3)
    self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = conv(64, 80, 1)
    self.Conv2d_4a_3x3 = conv(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32, conv)
    self.Mixed_5c = InceptionA(256, 64, conv)
    self.Mixed_5d = InceptionA(288, 64, conv)
    self.Mixed_6a = InceptionB(288, conv)
    self.Mixed_6b = InceptionC(768, 128, conv)
    self.Mixed_6c = InceptionC(768, 160, conv)
    self.Mixed_6d = InceptionC(768, 160, conv)
    self.Mixed_6e = InceptionC(768, 192, conv)
    self.Mixed_7a = InceptionD(768, conv)
    self.Mixed_7b = InceptionE(1280, "avg", conv)
    self.Mixed_7c = InceptionE(2048, "max", conv)
    self.fc = nnx.Linear(FEATURE_DIM, num_classes, dtype=dtype, precision=precision, rngs=rngs)

  def pool3(self, x: jax.Array) -> jax.Array:
    """The network on already preprocessed input: x (B, H, W, 3) in [-1, 1], H, W >= 75 -> (B, 2048) float32,
    the final average pool over the (B, 8, 8, 2048) Mixed_7c output (at 299 x 299)."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise WonderlandError(f"FID Inception: input must have shape (B, H, W, 3), got {x.shape}")
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise WonderlandError(f"FID Inception: input {x.shape[1]} x {x.shape[2]} is smaller than the "
                            f"{MIN_INPUT_SIZE} x {MIN_INPUT_SIZE} the network needs (resize to {INPUT_SIZE})")
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, 3, 2)
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
    x = max_pool(x, 3, 2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                  self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, images: jax.Array, *, resize: bool = True, normalize: bool = True) -> jax.Array:
    """images (B, H, W, 3) in [0, 1] -> pool3 features (B, 2048) float32, as pytorch-fid's `InceptionV3()`
    (block 3). resize=False skips the resize to 299 x 299 (any H, W >= 75 then); normalize=False expects
    input already in [-1, 1]. See `preprocess`."""
    return self.pool3(preprocess(images, resize=resize, normalize=normalize))

  def logits(self, images: jax.Array, *, resize: bool = True, normalize: bool = True) -> jax.Array:
    """images (B, H, W, 3) in [0, 1] -> the `fc` logits (B, 1008) float32 (dropout is the identity in eval)."""
    return self.fc(self(images, resize=resize, normalize=normalize)).astype(jnp.float32)

  def torch_shapes(self) -> dict[str, tuple[int, ...]]:
    """The state_dict keys of pytorch-fid's `fid_inception_v3()` (without `num_batches_tracked`) and their
    PyTorch-layout shapes."""
    shapes = {}
    for path, leaf in nnx.to_flat_state(nnx.state(self, nnx.Param)):
      *module, name = (str(part) for part in path)
      shape = tuple(leaf.get_value().shape)
      if name == "kernel" and len(shape) == 4:  # (kh, kw, I, O) -> (O, I, kh, kw)
        shapes[".".join(module + ["weight"])] = (shape[3], shape[2], shape[0], shape[1])
      elif name == "kernel":  # fc: (in, out) -> (out, in)
        shapes[".".join(module + ["weight"])] = shape[::-1]
      else:
        shapes[".".join(module + [_TORCH_NAMES[name]])] = shape
    return shapes


# ----------------------------------------------------------------------------------------------- loading


def _expected_keys(model: FIDInception, source) -> dict[str, tuple[int, ...]]:
  """`model.torch_shapes()` plus the file's `num_batches_tracked` scalars of BatchNorms the model has (optional:
  torch writes them since 0.4.1, older exports lack them)."""
  expected = model.torch_shapes()
  for key in source.keys():
    if key.endswith(".num_batches_tracked") and key.replace(".num_batches_tracked", ".running_mean") in expected:
      expected[key] = ()
  return expected


def _hint(source) -> str:
  keys = set(source.keys())
  if "fc.weight" in keys and source.shape("fc.weight") == (1000, FEATURE_DIM):
    return (" (it looks like torchvision's ImageNet inception_v3 weights; FID needs pytorch-fid's "
            f"{FID_WEIGHTS_URL.rsplit('/', 1)[-1]})")
  return ""


def load_fid_inception(path: str | os.PathLike, *, dtype: Any = None,
                       precision: Any = jax.lax.Precision.HIGHEST) -> FIDInception:
  """A `FIDInception` from pytorch-fid's weight file `pt_inception-2015-12-05-6726825d.pth` (`FID_WEIGHTS_URL`;
  a torch state_dict, read with weights_only) or the same keys in .safetensors. Params are float32; `dtype` /
  `precision`: see `FIDInception`. Nothing is downloaded. A missing, unexpected or mis-shaped key raises one
  `InputFileError` naming the file and listing them all; `AuxLogits.*` keys are ignored."""
  model = abstract_build(lambda: FIDInception(dtype=dtype, precision=precision, rngs=nnx.Rngs(0)))
  source = open_weights(path)
  check_keys(source, _expected_keys(model, source), IGNORED_PREFIXES, "pytorch-fid FID Inception", _hint(source))
  load_into(model, source, INCEPTION_RULES, jnp.float32)
  return model


# ----------------------------------------------------------------------------------------------- features


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("resize",))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, *, resize: bool) -> jax.Array:
  return nnx.merge(graphdef, state)(images, resize=resize)


def _as_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] (pytorch-fid's `ToTensor`: / 255) or float [0, 1] -> float32."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  return images.astype(np.float32, copy=False)


def feature_function(model: FIDInception, *, resize: bool = True) -> Callable[[np.ndarray], np.ndarray]:
  """The per-batch FID feature function of `model`: images (B, H, W, 3) numpy, uint8 or float in [0, 1] ->
  pool3 features (B, 2048) float32 numpy, through one jitted forward (compiled once per batch shape). Data
  sets: `wonderland_jax.eval.features.fid_features` / `fid_statistics`."""
  graphdef, state = nnx.split(model)

  def features(images: np.ndarray) -> np.ndarray:
    return np.asarray(_forward(graphdef, state, jnp.asarray(_as_unit_float(np.asarray(images))), resize=resize))
  return features
