"""The FVD feature network: Inception-I3D (Carreira & Zisserman 2017, Kinetics-400) in Flax NNX, channels-last,
in the key layout of piergiaj's `pytorch_i3d.py`, so that the public `i3d_pretrained_400.pt` loads as it is.

    i3d = load_i3d("i3d_pretrained_400.pt")                  # a torch state_dict (.pt) or its .safetensors copy
    feats = i3d(videos)                                      # (B, T, H, W, 3) in [0, 1] -> (B, 400) float32
    feats = fvd_features(i3d, videos_np, batch_size=8)       # wonderland_jax.eval.features: (N, 400) numpy
    fvd = frechet_video_distance(i3d, real_np, fake_np)      # the same module: the FVD of two video sets

The features are those of the FVD code that uses `i3d_pretrained_400.pt` (VideoGPT's `videogpt/fvd/fvd.py`, and
`fvd/videogpt/fvd.py` of common_metrics_on_video_quality / Open-Sora-Plan, which copy it), `preprocess_videos`:

  1. every frame is resized with torch's `F.interpolate(mode='bilinear', align_corners=False)` (no antialiasing)
     so that its shorter side is 224, the longer one `math.ceil(side * 224 / shorter)`, then centre-cropped to
     224 x 224 (start `(size - 224) // 2`);
  2. [0, 1] -> [-1, 1] (`(x - 0.5) * 2`; uint8 videos are divided by 255 first);
  3. the network: piergiaj's InceptionI3d up to Mixed_5c, its fixed `AvgPool3d(kernel (2, 7, 7), stride 1)`,
     the 1x1x1 `logits` convolution (bias, no BN, no activation; dropout is the identity at inference) and the
     mean of the 400 logits over the remaining time steps (VideoGPT's `logits.mean(dim=2)`).

The 7 x 7 window means the network needs 224 x 224 input (Mixed_5c is 7 x 7 there) and at least 9 frames (the
time axis is divided by 8, rounding up, and the window spans 2 steps); FVD uses 16-frame clips. VideoGPT's own
`preprocess` stops at [-0.5, 0.5] (it never doubles); the x 2 is common_metrics' fix. common_metrics also turns
float videos into uint8 (`(x * 255).astype(np.uint8)`, truncating) before resizing: pass uint8 videos (or
`np.floor(x * 255) / 255`) to reproduce its numbers on float input.

BatchNorm: inference mode, `(x - running_mean) / sqrt(running_var + eps) * weight + bias`. VideoGPT's copy of
`pytorch_i3d.py` (the one used with `i3d_pretrained_400.pt`) has eps = 1e-5 (`BN_EPS["videogpt"]`, the default);
piergiaj's original has 1e-3 (`BN_EPS["piergiaj"]`, TF I3D's value), to use with his `rgb_imagenet.pt`.

Padding is TensorFlow's 'SAME', computed from the input size per dimension as piergiaj's `compute_pad`:
`pad = max(k - s, 0)` if `size % s == 0` else `max(k - size % s, 0)`, `pad // 2` in front, the rest behind; the
max pools pad with zeros (`F.pad`) as his do (their inputs are ReLU outputs, so this equals -inf padding).

Keys: `{unit}.conv3d.weight` (O, I, t, h, w) -> our `{unit}.conv3d.kernel` (t, h, w, I, O); `{unit}.bn.weight /
bias / running_mean / running_var` -> `{unit}.bn.scale / bias / mean / var`; `logits.conv3d.bias` -> the same;
`*.num_batches_tracked` is ignored. `{unit}` is an endpoint (`Conv3d_1a_7x7`, `Conv3d_2b_1x1`, `Conv3d_2c_3x3`)
or an inception branch (`Mixed_3b.b0`, `.b1a`, `.b1b`, `.b2a`, `.b2b`, `.b3b`), or `logits`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
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

RESOLUTION = 224
NUM_CLASSES = 400
POOL_WINDOW = (2, 7, 7)  # piergiaj's `avg_pool`: AvgPool3d(kernel_size=[2, 7, 7], stride=(1, 1, 1))
MIN_FRAMES = 9
BN_EPS = {"videogpt": 1e-5, "piergiaj": 1e-3}
FEATURES = {"logits": NUM_CLASSES, "pool": 1024}

I3D_RULES = (
  Rule(r"(.*)\.conv3d\.weight", r"\1.conv3d.kernel", "conv3d"),
  Rule(r"(.*)\.conv3d\.bias", r"\1.conv3d.bias"),
  Rule(r"(.*)\.bn\.weight", r"\1.bn.scale"),
  Rule(r"(.*)\.bn\.bias", r"\1.bn.bias"),
  Rule(r"(.*)\.bn\.running_mean", r"\1.bn.mean"),
  Rule(r"(.*)\.bn\.running_var", r"\1.bn.var"),
  Rule(r".*\.num_batches_tracked", None),  # BatchNorm's step counter (torch >= 0.4.1 files have it)
)


# ----------------------------------------------------------------------------------------------- architecture


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """One of piergiaj's `VALID_ENDPOINTS` up to Mixed_5c. kind 'conv': a `Unit3D` (channels = (in, out));
  'pool': a `MaxPool3dSamePadding`; 'mixed': an `InceptionModule` (channels = (in, b0, b1a, b1b, b2a, b2b,
  b3b))."""

  name: str
  kind: str
  channels: tuple[int, ...] = ()
  kernel: tuple[int, int, int] = (1, 1, 1)
  stride: tuple[int, int, int] = (1, 1, 1)


def _mixed(name: str, cin: int, outs: Sequence[int]) -> Endpoint:
  return Endpoint(name, "mixed", (cin, *outs))


ENDPOINTS: tuple[Endpoint, ...] = (
  Endpoint("Conv3d_1a_7x7", "conv", (3, 64), (7, 7, 7), (2, 2, 2)),
  Endpoint("MaxPool3d_2a_3x3", "pool", (), (1, 3, 3), (1, 2, 2)),
  Endpoint("Conv3d_2b_1x1", "conv", (64, 64)),
  Endpoint("Conv3d_2c_3x3", "conv", (64, 192), (3, 3, 3)),
  Endpoint("MaxPool3d_3a_3x3", "pool", (), (1, 3, 3), (1, 2, 2)),
  _mixed("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
  _mixed("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
  Endpoint("MaxPool3d_4a_3x3", "pool", (), (3, 3, 3), (2, 2, 2)),
  _mixed("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
  _mixed("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
  _mixed("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
  _mixed("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
  _mixed("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
  Endpoint("MaxPool3d_5a_2x2", "pool", (), (2, 2, 2), (2, 2, 2)),
  _mixed("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
  _mixed("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
ENDPOINT_NAMES = tuple(e.name for e in ENDPOINTS)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """piergiaj's `compute_pad` (TensorFlow 'SAME'): (front, back) padding of an axis of `size` for a window."""
  pad = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
  return pad // 2, pad - pad // 2


def _pad_same(x: jax.Array, kernel: Sequence[int], stride: Sequence[int]) -> jax.Array:
  """Zero-pads the (T, H, W) axes of (B, T, H, W, C) as piergiaj's `F.pad(x, pad)` before a conv / pool."""
  pads = [same_padding(size, k, s) for size, k, s in zip(x.shape[1:4], kernel, stride)]
  if not any(p for pair in pads for p in pair):
    return x
  return jnp.pad(x, [(0, 0), *pads, (0, 0)])


def max_pool_same(x: jax.Array, kernel: Sequence[int], stride: Sequence[int]) -> jax.Array:
  """piergiaj's `MaxPool3dSamePadding` on (B, T, H, W, C): zero 'SAME' padding, then a floor-mode max pool."""
  x = _pad_same(x, kernel, stride)
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, *kernel, 1), (1, *stride, 1),
                               "VALID")


class Unit3D(nnx.Module):
  """piergiaj's `Unit3D`: 'SAME' zero padding, a bias-free Conv3d, BatchNorm, ReLU (the `logits` unit: a Conv3d
  with bias, no BN, no activation)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
               stride: Sequence[int] = (1, 1, 1), *, batch_norm: bool = True, activation: bool = True,
               use_bias: bool = False, bn_eps: float = BN_EPS["videogpt"], dtype: Any = None,
               precision: Any = None, rngs: nnx.Rngs):
    self.kernel, self.stride, self.activation = tuple(kernel), tuple(stride), activation
    self.conv3d = nnx.Conv(in_channels, out_channels, self.kernel, strides=self.stride, padding="VALID",
                           use_bias=use_bias, dtype=dtype, precision=precision, rngs=rngs)
    self.bn = FrozenBatchNorm(out_channels, bn_eps) if batch_norm else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, T, H, W, Cin) -> (B, ceil(T / st), ceil(H / sh), ceil(W / sw), Cout)."""
    x = self.conv3d(_pad_same(x, self.kernel, self.stride))
    if self.bn is not None:
      x = self.bn(x)
    return jax.nn.relu(x) if self.activation else x


class InceptionModule(nnx.Module):
  """piergiaj's `InceptionModule`: branches b0 (1x1x1), b1a -> b1b (1x1x1 -> 3x3x3), b2a -> b2b, and a 3x3x3
  stride-1 'SAME' max pool (b3a) -> b3b (1x1x1), concatenated over channels in that order."""

  BRANCHES = ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")

  def __init__(self, in_channels: int, outs: Sequence[int], **unit_kwargs):
    b0, b1a, b1b, b2a, b2b, b3b = outs
    self.b0 = Unit3D(in_channels, b0, **unit_kwargs)
    self.b1a = Unit3D(in_channels, b1a, **unit_kwargs)
    self.b1b = Unit3D(b1a, b1b, (3, 3, 3), **unit_kwargs)
    self.b2a = Unit3D(in_channels, b2a, **unit_kwargs)
    self.b2b = Unit3D(b2a, b2b, (3, 3, 3), **unit_kwargs)
    self.b3b = Unit3D(in_channels, b3b, **unit_kwargs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, T, H, W, Cin) -> (B, T, H, W, b0 + b1b + b2b + b3b)."""
    return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                            self.b3b(max_pool_same(x, (3, 3, 3), (1, 1, 1)))], axis=-1)


# ----------------------------------------------------------------------------------------------- preprocessing


def resized_size(height: int, width: int, resolution: int = RESOLUTION) -> tuple[int, int]:
  """The size VideoGPT's `preprocess` resizes a frame to before its centre crop: the shorter side to
  `resolution`, the other to `math.ceil(side * resolution / shorter)` (the same float expression)."""
  scale = resolution / min(height, width)
  if height < width:
    return resolution, math.ceil(width * scale)
  return math.ceil(height * scale), resolution


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) weights of torch's `F.interpolate(mode='bilinear', align_corners=False)` along one
  axis (no antialiasing): source = max((i + 0.5) * in / out - 0.5, 0), blending floor(source) and the next.
  The scale is float32 and each source coordinate is rounded to float32 once (torch's CPU kernel, whose
  multiply-add is fused); rounding in float64 instead changes a 300 -> 263 resize by up to 3e-5."""
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  source = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32), np.float32(0.0))
  low = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = np.clip(source - low.astype(np.float32), 0.0, 1.0)  # float32, exact
  frac, rest = frac.astype(np.float64), (np.float32(1.0) - frac).astype(np.float64)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, low), rest)
  np.add.at(matrix, (rows, high), frac)
  return matrix


def preprocess_videos(videos: jax.Array, resolution: int = RESOLUTION, *, resize: bool = True) -> jax.Array:
  """VideoGPT's / common_metrics' FVD preprocessing (see the module docstring): (B, T, H, W, 3) in [0, 1]
  (float) or {0..255} (uint8) -> (B, T, resolution, resolution, 3) float32 in [-1, 1]. resize=False only
  rescales (the frames must already be resolution x resolution for the network's head)."""
  if videos.ndim != 5 or videos.shape[-1] != 3:
    raise WonderlandError(f"I3D: videos must have shape (B, T, H, W, 3), got {videos.shape}")
  if videos.dtype == jnp.uint8:
    videos = videos.astype(jnp.float32) / 255.0
  videos = videos.astype(jnp.float32)
  if resize:
    height, width = videos.shape[2:4]
    out_h, out_w = resized_size(height, width, resolution)
    top, left = (out_h - resolution) // 2, (out_w - resolution) // 2
    # only the rows / columns the centre crop keeps
    rows = bilinear_matrix(height, out_h)[top:top + resolution].astype(np.float32)
    cols = bilinear_matrix(width, out_w)[left:left + resolution].astype(np.float32)
    videos = jnp.einsum("ph,bthwc,qw->btpqc", rows, videos, cols, precision=jax.lax.Precision.HIGHEST)
  return (videos - 0.5) * 2.0


# ----------------------------------------------------------------------------------------------- the network


class I3D(nnx.Module):
  """Inception-I3D with piergiaj's structure and names (see the module docstring), channels-last.

  Attributes are the endpoints with params (`Conv3d_1a_7x7`, `Conv3d_2b_1x1`, `Conv3d_2c_3x3`: `Unit3D`;
  `Mixed_3b` ... `Mixed_5c`: `InceptionModule`) and `logits` (a 1x1x1 `Unit3D` with bias, 1024 -> num_classes).
  `bn_eps`: `BN_EPS['videogpt']` (1e-5, default) or `BN_EPS['piergiaj']` (1e-3). `dtype`: compute dtype of the
  convolutions (params stay float32; features are returned in float32); `precision`: their
  `jax.lax.Precision` (HIGHEST by default: a metric should not depend on the backend's matmul precision).
  """

  def __init__(self, num_classes: int = NUM_CLASSES, *, bn_eps: float = BN_EPS["videogpt"], dtype: Any = None,
               precision: Any = jax.lax.Precision.HIGHEST, rngs: nnx.Rngs):
    unit = dict(bn_eps=bn_eps, dtype=dtype, precision=precision, rngs=rngs)
    self.num_classes = num_classes
    for endpoint in ENDPOINTS:
      if endpoint.kind == "conv":
        setattr(self, endpoint.name, Unit3D(*endpoint.channels, endpoint.kernel, endpoint.stride, **unit))
      elif endpoint.kind == "mixed":
        setattr(self, endpoint.name, InceptionModule(endpoint.channels[0], endpoint.channels[1:], **unit))
    self.logits = Unit3D(1024, num_classes, batch_norm=False, activation=False, use_bias=True, **unit)

  # -- keys

  def units(self) -> dict[str, Unit3D]:
    """{piergiaj key prefix: Unit3D}, e.g. 'Conv3d_1a_7x7', 'Mixed_3b.b1a', 'logits'."""
    units = {}
    for endpoint in ENDPOINTS:
      if endpoint.kind == "conv":
        units[endpoint.name] = getattr(self, endpoint.name)
      elif endpoint.kind == "mixed":
        module = getattr(self, endpoint.name)
        units.update({f"{endpoint.name}.{b}": getattr(module, b) for b in InceptionModule.BRANCHES})
    units["logits"] = self.logits
    return units

  def torch_shapes(self) -> dict[str, tuple[int, ...]]:
    """The piergiaj state_dict keys (without `num_batches_tracked`) and their PyTorch-layout shapes."""
    shapes = {}
    for prefix, unit in self.units().items():
      conv = unit.conv3d
      shapes[f"{prefix}.conv3d.weight"] = (conv.out_features, conv.in_features, *unit.kernel)
      if conv.use_bias:
        shapes[f"{prefix}.conv3d.bias"] = (conv.out_features,)
      if unit.bn is not None:
        for name in ("weight", "bias", "running_mean", "running_var"):
          shapes[f"{prefix}.bn.{name}"] = (conv.out_features,)
    return shapes

  def ignored_keys(self) -> tuple[str, ...]:
    """The BatchNorm step counters, which a torch >= 0.4.1 state_dict has and the network does not use."""
    return tuple(f"{prefix}.bn.num_batches_tracked" for prefix, unit in self.units().items() if unit.bn is not None)

  # -- forward

  def endpoints(self, x: jax.Array, names: Sequence[str] | str = ("Mixed_5c",)) -> dict[str, jax.Array]:
    """x (B, T, H, W, 3) already preprocessed (in [-1, 1], any size) -> {name: (B, t, h, w, C)} for the
    endpoints `names` (of `ENDPOINT_NAMES`); runs up to the deepest one asked for."""
    if isinstance(names, str):
      names = (names,)
    if x.ndim != 5 or x.shape[-1] != 3:
      raise WonderlandError(f"I3D input must have shape (B, T, H, W, 3), got {x.shape}")
    unknown = [name for name in names if name not in ENDPOINT_NAMES]
    if unknown or not names:
      raise WonderlandError(f"I3D has no endpoint(s) {', '.join(map(repr, unknown)) or '(none asked for)'}; "
                            f"its endpoints: {', '.join(ENDPOINT_NAMES)}")
    last = max(ENDPOINT_NAMES.index(name) for name in names)
    out = {}
    for endpoint in ENDPOINTS[:last + 1]:
      if endpoint.kind == "pool":
        x = max_pool_same(x, endpoint.kernel, endpoint.stride)
      else:
        x = getattr(self, endpoint.name)(x)
      if endpoint.name in names:
        out[endpoint.name] = x
    return out

  def head(self, mixed_5c: jax.Array, features: str = "logits") -> jax.Array:
    """Mixed_5c (B, t, 7, 7, 1024) -> features, float32: 'logits' (B, num_classes): piergiaj's avg_pool
    (window (2, 7, 7), stride 1), the logits unit, the mean over time (VideoGPT's `forward`); 'pool' (B, 1024):
    the mean over time of the avg_pool output (`extract_features`)."""
    if features not in FEATURES:
      raise WonderlandError(f"I3D: unknown features {features!r}; use one of {', '.join(FEATURES)}")
    _, t, h, w, _ = mixed_5c.shape
    if (h, w) != POOL_WINDOW[1:] or t < POOL_WINDOW[0]:
      raise WonderlandError(
        f"I3D head: its fixed {POOL_WINDOW} average pool needs Mixed_5c features of 7 x 7 with at least 2 time "
        f"steps (input of {RESOLUTION} x {RESOLUTION} with at least {MIN_FRAMES} frames); got {t} x {h} x {w}")
    x = mixed_5c.astype(jnp.float32)
    pooled = (x[:, 1:] + x[:, :-1]).mean(axis=(2, 3), keepdims=True) / 2.0  # (B, t - 1, 1, 1, 1024)
    if features == "pool":
      return pooled.mean(axis=(1, 2, 3))
    return self.logits(pooled).astype(jnp.float32).mean(axis=(1, 2, 3))

  def __call__(self, videos: jax.Array, *, resize: bool = True, features: str = "logits") -> jax.Array:
    """videos (B, T, H, W, 3) in [0, 1] (or uint8), T >= 9 -> FVD features (B, 400) ('logits') or (B, 1024)
    ('pool'), float32. resize=True applies `preprocess_videos` (resize + centre crop to 224 x 224); with
    resize=False the frames must already be 224 x 224 and are only rescaled to [-1, 1]."""
    x = preprocess_videos(videos, resize=resize)
    return self.head(self.endpoints(x, "Mixed_5c")["Mixed_5c"], features)


# ----------------------------------------------------------------------------------------------- loading


def load_i3d(path: str | os.PathLike, *, bn_eps: float = BN_EPS["videogpt"], dtype: Any = None,
             precision: Any = jax.lax.Precision.HIGHEST) -> I3D:
  """An `I3D` from a piergiaj-layout state_dict: `i3d_pretrained_400.pt` (VideoGPT's FVD weights),
  `rgb_imagenet.pt` / `rgb_charades.pt` (piergiaj's; use bn_eps=BN_EPS['piergiaj'] for his classifier), read
  with torch.load(weights_only=True), or the same keys in .safetensors. The number of classes is read from
  `logits.conv3d.bias`. Params are float32; `dtype` / `precision`: see `I3D`. A missing, unexpected or
  mis-shaped key raises `InputFileError` naming the file and listing them all."""
  source = open_weights(path)
  num_classes = source.shape("logits.conv3d.bias")[0] if "logits.conv3d.bias" in source.keys() else NUM_CLASSES
  model = abstract_build(lambda: I3D(num_classes, bn_eps=bn_eps, dtype=dtype, precision=precision,
                                     rngs=nnx.Rngs(0)))
  check_keys(source, model.torch_shapes(), model.ignored_keys(), "piergiaj InceptionI3d")
  load_into(model, source, I3D_RULES, jnp.float32)
  return model


# ----------------------------------------------------------------------------------------------- features


@functools.partial(jax.jit, static_argnames=("graphdef", "resize", "features"))
def _forward(graphdef, state, videos, resize, features):
  return nnx.merge(graphdef, state)(videos, resize=resize, features=features)


def feature_dim(model: I3D, features: str = "logits") -> int:
  """The size of `model`'s `features` ('logits': its number of classes, 'pool': 1024)."""
  if features not in FEATURES:
    raise WonderlandError(f"I3D: unknown features {features!r}; use one of {', '.join(FEATURES)}")
  return model.num_classes if features == "logits" else FEATURES["pool"]


def feature_function(model: I3D, *, resize: bool = True,
                     features: str = "logits") -> Callable[[np.ndarray], np.ndarray]:
  """The per-batch FVD feature function of `model`: videos (B, T, H, W, 3) numpy, float in [0, 1] or uint8 ->
  `model(videos, resize=resize, features=features)` (B, D) float32 numpy, through one jitted forward (compiled
  once per batch shape). Data sets: `wonderland_jax.eval.features.fvd_features` / `fvd_statistics`."""
  graphdef, state = nnx.split(model)

  def batch_features(videos: np.ndarray) -> np.ndarray:
    return np.asarray(_forward(graphdef, state, jnp.asarray(videos), resize, features))
  return batch_features
