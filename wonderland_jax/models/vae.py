"""CogVideoX's 3D causal VAE (diffusers `AutoencoderKLCogVideoX`) in Flax NNX, channels-last.

    vae = CogVideoXVAE(VAEConfig.from_diffusers(config_json), rngs=nnx.Rngs(0))
    posterior = vae.encode(video)            # video (B, T, H, W, 3) in [-1, 1]
    latents = posterior.mode()               # (B, 1 + (T - 1) // 4, H / 8, W / 8, 16), unscaled
    frames = vae.decode(latents)             # (B, T, H, W, 3)

Attribute paths equal diffusers' module paths (`encoder.down_blocks[0].resnets[1].conv1.conv`), so the
converter (`wonderland_jax/convert/cogvideox_vae.py`) is a short table of renames and layouts.

Exactly as diffusers does by default, videos are processed in chunks of frames (8 video frames, plus the
remainder in the first chunk, to encode; 2 latent frames, plus the remainder, to decode) with a causal-conv
cache carried from chunk to chunk; GroupNorm statistics are per chunk. Here the cache is an immutable pytree
returned and passed by every block (no module state): the first chunk runs alone (it fixes the cache's
shapes) and the remaining chunks run under `lax.scan`, so activation memory does not grow with the number of
frames. `tiled=True` adds diffusers' spatial tiling with overlap blending.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.checkpoints import register_model
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.common import config_values
from wonderland_jax.nn.partitioning import axes, param_init_context

Cache = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The fields of diffusers' `AutoencoderKLCogVideoX` config.json, plus our compute `dtype`."""

  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple[str, ...] = ("CogVideoXDownBlock3D",) * 4
  up_block_types: tuple[str, ...] = ("CogVideoXUpBlock3D",) * 4
  block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
  latent_channels: int = 16
  layers_per_block: int = 3
  act_fn: str = "silu"
  norm_eps: float = 1e-6
  norm_num_groups: int = 32
  temporal_compression_ratio: float = 4
  sample_height: int = 480
  sample_width: int = 720
  scaling_factor: float = 1.15258426
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = False
  use_post_quant_conv: bool = False
  invert_scale_latents: bool = False
  dtype: str = "float32"  # compute dtype of the convolutions (params stay float32; norms run in float32)

  @classmethod
  def from_diffusers(cls, config: dict, *, where: str = "VAE config", **overrides) -> VAEConfig:
    """From a diffusers config.json dict (private `_...` keys ignored; unknown keys are an error); `where` names
    the config in error messages (a file, a flag)."""
    values = config_values(cls, config, "VAE", **overrides)
    for name in ("down_block_types", "up_block_types", "block_out_channels", "latents_mean", "latents_std"):
      if isinstance(values.get(name), (list, tuple)):
        values[name] = tuple(values[name])
    config = cls(**values)
    config.validate(where)
    return config

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def validate(self, where: str = "VAE config") -> None:
    """Raises `WonderlandError` '{where}: FIELD ...' for a config no model can be built from."""
    def positive_int(name: str, value) -> None:
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WonderlandError(f"{where}: {name} must be a positive integer, got {value!r}")

    for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                 "sample_height", "sample_width"):
      positive_int(name, getattr(self, name))
    if not isinstance(self.block_out_channels, tuple) or not self.block_out_channels:
      raise WonderlandError(f"{where}: block_out_channels must be a non-empty list, got {self.block_out_channels!r}")
    for channels in self.block_out_channels:
      positive_int("block_out_channels", channels)
      if channels % self.norm_num_groups:
        raise WonderlandError(f"{where}: norm_num_groups={self.norm_num_groups} does not divide block_out_channels "
                              f"{list(self.block_out_channels)}")
    for name in ("norm_eps", "scaling_factor"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise WonderlandError(f"{where}: {name} must be a positive number, got {value!r}")
    ratio = self.temporal_compression_ratio
    if (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1 or int(ratio) != ratio
        or int(ratio) & (int(ratio) - 1)):
      raise WonderlandError(f"{where}: temporal_compression_ratio must be a power of two, got {ratio!r}")
    if any(t != "CogVideoXDownBlock3D" for t in self.down_block_types):
      raise WonderlandError(
          f"VAE config: down_block_types must all be CogVideoXDownBlock3D, got {self.down_block_types}")
    if any(t != "CogVideoXUpBlock3D" for t in self.up_block_types):
      raise WonderlandError(f"VAE config: up_block_types must all be CogVideoXUpBlock3D, got {self.up_block_types}")
    if not len(self.down_block_types) == len(self.up_block_types) == len(self.block_out_channels):
      raise WonderlandError("VAE config: down_block_types, up_block_types and block_out_channels need equal lengths")
    if self.act_fn not in ("silu", "swish"):
      raise WonderlandError(f"VAE config: act_fn {self.act_fn!r} is not supported (silu)")

  def scale_latents(self, latents):
    """Posterior latents -> the diffusion model's latent space (times `scaling_factor`, divided when
    `invert_scale_latents`): what the pipelines sample and the LaLRM reads."""
    return latents / self.scaling_factor if self.invert_scale_latents else latents * self.scaling_factor

  def unscale_latents(self, latents):
    """The inverse of `scale_latents`: what `decode` takes."""
    return latents * self.scaling_factor if self.invert_scale_latents else latents / self.scaling_factor

  @property
  def spatial_compression(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


# ----------------------------------------------------------------------------------------------- helpers


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """PyTorch's 'nearest' source indices (float32 scale in/out, floor, clamp)."""
  if out_size == in_size:
    return np.arange(out_size)
  if out_size == 2 * in_size:
    return np.arange(out_size) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def resize_nearest(x: jax.Array, size: tuple[int, ...], axes: tuple[int, ...]) -> jax.Array:
  """Nearest-neighbour resize of `axes` of x to `size`, with torch.nn.functional.interpolate's indexing."""
  for axis, out_size in zip(axes, size):
    in_size = x.shape[axis]
    factor = out_size // in_size
    if out_size == factor * in_size and factor & (factor - 1) == 0:
      # power-of-two factor: torch's float32 floor(i * in / out) is exactly i // factor, a plain repeat
      x = jnp.repeat(x, factor, axis=axis)
    else:
      x = jnp.take(x, _nearest_indices(in_size, out_size), axis=axis)
  return x


# The logical name of the convolutions' output channels (and the norms' channels): not in the default sharding
# rules (the VAE is replicated; add ('channels', 'fsdp') to the rules to shard it).
CHANNELS = "channels"


def _conv_axes(spatial_dims: int, channel_axis: str | None = CHANNELS) -> dict:
  return dict(kernel_metadata=axes(*([None] * (spatial_dims + 1)), channel_axis), bias_metadata=axes(channel_axis))


class GroupNorm(nnx.Module):
  """torch.nn.GroupNorm over (T, H, W, C // groups), channels-last, computed in float32."""

  def __init__(self, num_channels: int, num_groups: int, eps: float, *, rngs: nnx.Rngs):
    self.norm = nnx.GroupNorm(num_channels, num_groups, epsilon=eps, dtype=jnp.float32, use_fast_variance=False,
                              scale_metadata=axes(CHANNELS), bias_metadata=axes(CHANNELS), rngs=rngs)

  def __call__(self, x):
    return self.norm(x.astype(jnp.float32)).astype(x.dtype)


def conv3d(x: jax.Array, conv: nnx.Conv, spatial_pad: int) -> jax.Array:
  """A 'valid'-in-time 3D convolution with the params of `conv` (kernel (T, H, W, I, O)), computed as a sum
  of per-time-tap 2D convolutions: the same numbers as one 3D convolution, and 2x faster on XLA:CPU
  (docs/benchmarks.md). x: (B, T, H, W, I) -> (B, T - k_t + 1, H', W', O)."""
  kernel = conv.kernel[...].astype(conv.dtype or x.dtype)
  x = x.astype(kernel.dtype)
  taps, frames = kernel.shape[0], x.shape[1] - kernel.shape[0] + 1
  batch = x.shape[0]
  out = None
  for tap in range(taps):
    frames_in = x[:, tap:tap + frames].reshape(batch * frames, *x.shape[2:])
    y = jax.lax.conv_general_dilated(frames_in, kernel[tap], (1, 1), [(spatial_pad, spatial_pad)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = y if out is None else out + y
  out = out + conv.bias[...].astype(out.dtype)
  return out.reshape(batch, frames, *out.shape[1:])


class Conv3d(nnx.Module):
  """A plain 1x1x1 3D convolution (diffusers' CogVideoXSafeConv3d as used here), `kernel` (1, 1, 1, I, O)."""

  def __init__(self, in_channels, out_channels, *, dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, out_channels, (1, 1, 1), padding="VALID", dtype=dtype, rngs=rngs,
                         **_conv_axes(3))

  def __call__(self, x):
    return conv3d(x, self.conv, 0)


class CausalConv3d(nnx.Module):
  """CogVideoXCausalConv3d: time padded on the past with the cache (first chunk: the first frame repeated),
  space zero-padded. Returns (output, new cache); the cache is the last (k_t - 1) input frames."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dtype, rngs: nnx.Rngs,
               channel_axis: str | None = CHANNELS):
    self.time_kernel = kernel_size
    self.conv = nnx.Conv(in_channels, out_channels, (kernel_size,) * 3, padding="VALID", dtype=dtype, rngs=rngs,
                         **_conv_axes(3, channel_axis))

  def __call__(self, x, cache=None):
    pad = (self.time_kernel - 1) // 2
    if self.time_kernel == 1:
      return conv3d(x, self.conv, pad), None
    past = cache if cache is not None else jnp.repeat(x[:, :1], self.time_kernel - 1, axis=1)
    x = jnp.concatenate([past.astype(x.dtype), x], axis=1)
    return conv3d(x, self.conv, pad), x[:, -(self.time_kernel - 1):]


class SpatialNorm3D(nnx.Module):
  """CogVideoXSpatialNorm3D: GroupNorm(f) * conv_y(zq) + conv_b(zq), zq resized (nearest) to f's size."""

  def __init__(self, f_channels: int, zq_channels: int, groups: int, *, dtype, rngs: nnx.Rngs):
    self.norm_layer = GroupNorm(f_channels, groups, 1e-6, rngs=rngs)
    self.conv_y = CausalConv3d(zq_channels, f_channels, 1, dtype=dtype, rngs=rngs)
    self.conv_b = CausalConv3d(zq_channels, f_channels, 1, dtype=dtype, rngs=rngs)

  def __call__(self, f, zq):
    frames, height, width = f.shape[1:4]
    if frames > 1 and frames % 2 == 1:
      first = resize_nearest(zq[:, :1], (1, height, width), (1, 2, 3))
      rest = resize_nearest(zq[:, 1:], (frames - 1, height, width), (1, 2, 3))
      zq = jnp.concatenate([first, rest], axis=1)
    else:
      zq = resize_nearest(zq, (frames, height, width), (1, 2, 3))
    zq = zq.astype(f.dtype)
    return self.norm_layer(f) * self.conv_y(zq)[0] + self.conv_b(zq)[0]


class ResnetBlock3D(nnx.Module):
  """CogVideoXResnetBlock3D (no time embedding, no dropout at inference); spatial norms in the decoder."""

  def __init__(self, in_channels: int, out_channels: int, groups: int, eps: float, *, spatial_norm_dim=None,
               dtype, rngs: nnx.Rngs):
    if spatial_norm_dim is None:
      self.norm1 = GroupNorm(in_channels, groups, eps, rngs=rngs)
      self.norm2 = GroupNorm(out_channels, groups, eps, rngs=rngs)
    else:
      self.norm1 = SpatialNorm3D(in_channels, spatial_norm_dim, groups, dtype=dtype, rngs=rngs)
      self.norm2 = SpatialNorm3D(out_channels, spatial_norm_dim, groups, dtype=dtype, rngs=rngs)
    self.conv1 = CausalConv3d(in_channels, out_channels, 3, dtype=dtype, rngs=rngs)
    self.conv2 = CausalConv3d(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
    self.conv_shortcut = (Conv3d(in_channels, out_channels, dtype=dtype, rngs=rngs)
                          if in_channels != out_channels else None)
    self.spatial = spatial_norm_dim is not None

  def _norm(self, norm, x, zq):
    return norm(x, zq) if self.spatial else norm(x)

  def __call__(self, x, zq=None, cache: Cache | None = None):
    cache = cache or {}
    new_cache = {}
    h = jax.nn.silu(self._norm(self.norm1, x, zq))
    h, new_cache["conv1"] = self.conv1(h, cache.get("conv1"))
    h = jax.nn.silu(self._norm(self.norm2, h, zq))
    h, new_cache["conv2"] = self.conv2(h, cache.get("conv2"))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return h + x, new_cache


class Downsample3D(nnx.Module):
  """CogVideoXDownsample3D: optional time halving (average of frame pairs, the first frame of an odd count
  kept), then a stride-2 3x3 conv2d per frame on the input padded by one pixel at the right and bottom."""

  def __init__(self, channels: int, compress_time: bool, *, dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(channels, channels, (3, 3), strides=2, padding="VALID", dtype=dtype, rngs=rngs,
                         **_conv_axes(2))
    self.compress_time = compress_time

  def __call__(self, x):
    if self.compress_time:
      frames = x.shape[1]
      first, rest = (x[:, :1], x[:, 1:]) if frames % 2 == 1 else (x[:, :0], x)
      pairs = rest.shape[1] // 2
      if pairs:
        rest = rest[:, : 2 * pairs].reshape(rest.shape[0], pairs, 2, *rest.shape[2:]).mean(axis=2)
      else:
        rest = rest[:, :0]
      x = jnp.concatenate([first, rest], axis=1)
    batch, frames = x.shape[:2]
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
    y = self.conv(x.reshape(batch * frames, *x.shape[2:]))
    return y.reshape(batch, frames, *y.shape[1:])


class Upsample3D(nnx.Module):
  """CogVideoXUpsample3D: nearest 2x in space (and in time when compressing: an odd count keeps its first
  frame single), then a 3x3 conv2d per frame (padding 1)."""

  def __init__(self, channels: int, compress_time: bool, *, dtype, rngs: nnx.Rngs):
    self.conv = nnx.Conv(channels, channels, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs,
                         **_conv_axes(2))
    self.compress_time = compress_time

  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    frames = x.shape[1]
    if self.compress_time and frames > 1:
      if frames % 2 == 1:
        x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
      else:
        x = jnp.repeat(x, 2, axis=1)
    batch, frames = x.shape[:2]
    y = self.conv(x.reshape(batch * frames, *x.shape[2:]))
    return y.reshape(batch, frames, *y.shape[1:])


def _run_resnets(resnets, x, zq, cache: Cache | None):
  """Runs a block's resnets in order, threading each one's cache under diffusers' key `resnet_{i}`."""
  cache = cache or {}
  new_cache = {}
  for i, resnet in enumerate(resnets):
    x, new_cache[f"resnet_{i}"] = resnet(x, zq, cache.get(f"resnet_{i}"))
  return x, new_cache


class DownBlock3D(nnx.Module):
  def __init__(self, in_channels, out_channels, num_layers, groups, eps, add_downsample, compress_time, *,
               dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, eps,
                                           dtype=dtype, rngs=rngs) for i in range(num_layers)])
    self.downsamplers = (nnx.List([Downsample3D(out_channels, compress_time, dtype=dtype, rngs=rngs)])
                         if add_downsample else None)

  def __call__(self, x, cache: Cache | None = None):
    x, new_cache = _run_resnets(self.resnets, x, None, cache)
    for downsampler in self.downsamplers or ():
      x = downsampler(x)
    return x, new_cache


class UpBlock3D(nnx.Module):
  def __init__(self, in_channels, out_channels, num_layers, groups, eps, spatial_norm_dim, add_upsample,
               compress_time, *, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, eps,
                                           spatial_norm_dim=spatial_norm_dim, dtype=dtype, rngs=rngs)
                             for i in range(num_layers)])
    self.upsamplers = (nnx.List([Upsample3D(out_channels, compress_time, dtype=dtype, rngs=rngs)])
                       if add_upsample else None)

  def __call__(self, x, zq, cache: Cache | None = None):
    x, new_cache = _run_resnets(self.resnets, x, zq, cache)
    for upsampler in self.upsamplers or ():
      x = upsampler(x)
    return x, new_cache


class MidBlock3D(nnx.Module):
  def __init__(self, channels, groups, eps, spatial_norm_dim, *, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock3D(channels, channels, groups, eps, spatial_norm_dim=spatial_norm_dim,
                                           dtype=dtype, rngs=rngs) for _ in range(2)])

  def __call__(self, x, zq=None, cache: Cache | None = None):
    return _run_resnets(self.resnets, x, zq, cache)


class Encoder3D(nnx.Module):
  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    channels, groups, eps, dtype = config.block_out_channels, config.norm_num_groups, config.norm_eps, config.dtype
    compress_levels = int(np.log2(config.temporal_compression_ratio))
    self.conv_in = CausalConv3d(config.in_channels, channels[0], 3, dtype=dtype, rngs=rngs)
    self.down_blocks = nnx.List([
        DownBlock3D(channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups, eps,
                    add_downsample=i < len(channels) - 1, compress_time=i < compress_levels, dtype=dtype,
                    rngs=rngs) for i in range(len(channels))])
    self.mid_block = MidBlock3D(channels[-1], groups, eps, None, dtype=dtype, rngs=rngs)
    self.norm_out = GroupNorm(channels[-1], groups, 1e-6, rngs=rngs)
    self.conv_out = CausalConv3d(channels[-1], 2 * config.latent_channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x, cache: Cache | None = None):
    cache = cache or {}
    new_cache = {}
    x, new_cache["conv_in"] = self.conv_in(x, cache.get("conv_in"))
    for i, block in enumerate(self.down_blocks):
      x, new_cache[f"down_block_{i}"] = block(x, cache.get(f"down_block_{i}"))
    x, new_cache["mid_block"] = self.mid_block(x, None, cache.get("mid_block"))
    x = jax.nn.silu(self.norm_out(x))
    x, new_cache["conv_out"] = self.conv_out(x, cache.get("conv_out"))
    return x, new_cache


class Decoder3D(nnx.Module):
  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    channels = tuple(reversed(config.block_out_channels))
    groups, eps, dtype, zq_dim = config.norm_num_groups, config.norm_eps, config.dtype, config.latent_channels
    compress_levels = int(np.log2(config.temporal_compression_ratio))
    self.conv_in = CausalConv3d(zq_dim, channels[0], 3, dtype=dtype, rngs=rngs)
    self.mid_block = MidBlock3D(channels[0], groups, eps, zq_dim, dtype=dtype, rngs=rngs)
    self.up_blocks = nnx.List([
        UpBlock3D(channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups, eps, zq_dim,
                  add_upsample=i < len(channels) - 1, compress_time=i < compress_levels, dtype=dtype, rngs=rngs)
        for i in range(len(channels))])
    self.norm_out = SpatialNorm3D(channels[-1], zq_dim, groups, dtype=dtype, rngs=rngs)
    self.conv_out = CausalConv3d(channels[-1], config.out_channels, 3, dtype=dtype, rngs=rngs,
                                 channel_axis=None)  # RGB

  def __call__(self, z, cache: Cache | None = None):
    cache = cache or {}
    new_cache = {}
    x, new_cache["conv_in"] = self.conv_in(z, cache.get("conv_in"))
    x, new_cache["mid_block"] = self.mid_block(x, z, cache.get("mid_block"))
    for i, block in enumerate(self.up_blocks):
      x, new_cache[f"up_block_{i}"] = block(x, z, cache.get(f"up_block_{i}"))
    x = jax.nn.silu(self.norm_out(x, z))
    x, new_cache["conv_out"] = self.conv_out(x, cache.get("conv_out"))
    return x, new_cache


# ------------------------------------------------------------------------------------------- the model


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DiagonalGaussian:
  """The posterior q(z | x): `mean`, `logvar` (clamped to [-30, 20]) of shape (B, t, h, w, C)."""

  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng: jax.Array) -> jax.Array:
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

  def mode(self) -> jax.Array:
    return self.mean


def frame_chunks(num_frames: int, chunk: int) -> tuple[int, int]:
  """diffusers' frame batching: (size of the first chunk, number of further chunks of `chunk` frames)."""
  num_chunks = max(num_frames // chunk, 1)
  if num_chunks == 1:
    return num_frames, 0
  return chunk + num_frames % chunk, num_chunks - 1


# How the frame chunks after the first run: 'scan' (lax.scan, the default: activation memory does not grow with
# the number of chunks), 'unrolled' (the same scan unrolled) or 'python' (a Python loop of static slices).
_FRAME_LOOP = contextvars.ContextVar("wonderland_vae_frame_loop", default="scan")


@contextlib.contextmanager
def _frame_loop(mode: str):
  token = _FRAME_LOOP.set(mode)
  try:
    yield
  finally:
    _FRAME_LOOP.reset(token)


def unrolled_frame_scan():
  """Inside, the frame-chunk scan is traced unrolled: the same program, one copy of the body per chunk, so XLA's
  cost analysis (which counts a loop body once) counts every chunk (`train.plan_jobs` FLOPs)."""
  return _frame_loop("unrolled")


def python_frame_loop():
  """Inside, the frame chunks after the first are traced as a Python loop over static slices (same results).
  For training steps on CPU: XLA's gradient of the chunk scan is an order of magnitude slower there (a 17-frame
  64x64 autoencoder step of a small VAE: 19.2 s against 2.2 s, benchmarks/vae_train_step.py), at the price of
  activation memory that grows with the number of chunks."""
  return _frame_loop("python")


def _run_chunked(step, x: jax.Array, chunk: int) -> jax.Array:
  """Runs `step(chunk, cache) -> (out, cache)` over time chunks of x (B, T, ...): first chunk alone, the
  rest under lax.scan with the cache as carry; outputs concatenated along time."""
  first_size, num_rest = frame_chunks(x.shape[1], chunk)
  out, cache = step(x[:, :first_size], None)
  if num_rest == 0:
    return out

  if _FRAME_LOOP.get() == "python":
    outs = [out]
    for index in range(num_rest):
      y, cache = step(x[:, first_size + index * chunk:first_size + (index + 1) * chunk], cache)
      outs.append(y.astype(out.dtype))
    return jnp.concatenate(outs, axis=1)

  def body(cache, index):  # slices the input in place: no copy of the whole video
    xs = jax.lax.dynamic_slice_in_dim(x, first_size + index * chunk, chunk, axis=1)
    y, cache = step(xs, cache)
    return cache, y

  _, outs = jax.lax.scan(body, cache, jnp.arange(num_rest), unroll=num_rest if _FRAME_LOOP.get() == "unrolled" else 1)
  outs = jnp.moveaxis(outs, 0, 1)
  outs = outs.reshape(outs.shape[0], -1, *outs.shape[3:])
  return jnp.concatenate([out, outs.astype(out.dtype)], axis=1)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """diffusers' tiling parameters (sizes in pixels; latent tiles are these / spatial compression)."""

  sample_height: int
  sample_width: int
  overlap_factor_height: float = 1 / 6
  overlap_factor_width: float = 1 / 5


class CogVideoXVAE(nnx.Module):
  """The CogVideoX VAE; see the module docstring."""

  sample_frames_per_chunk = 8
  latent_frames_per_chunk = 2

  def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
    self.config = config
    with param_init_context():
      self.encoder = Encoder3D(config, rngs=rngs)
      self.decoder = Decoder3D(config, rngs=rngs)
      # diffusers sizes these with out_channels (not latent_channels); kept identical for checkpoint parity.
      self.quant_conv = (Conv3d(2 * config.out_channels, 2 * config.out_channels, dtype=config.dtype, rngs=rngs)
                         if config.use_quant_conv else None)
      self.post_quant_conv = (Conv3d(config.out_channels, config.out_channels, dtype=config.dtype, rngs=rngs)
                              if config.use_post_quant_conv else None)

  def default_tiling(self) -> Tiling:
    return Tiling(self.config.sample_height // 2, self.config.sample_width // 2)

  # -- encode

  def _encode_step(self, x, cache):
    h, cache = self.encoder(x.astype(self.config.compute_dtype), cache)
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    return h, cache

  def _encode_moments(self, video):
    return _run_chunked(self._encode_step, video, self.sample_frames_per_chunk).astype(jnp.float32)

  def encode(self, video: jax.Array, *, tiled: bool = False, tiling: Tiling | None = None) -> DiagonalGaussian:
    """video (B, T, H, W, in_channels) in [-1, 1] -> posterior over latents (B, t, H/8, W/8, latent_channels)."""
    self._check(video, self.config.in_channels, "video")
    tiling = tiling or self.default_tiling()
    height, width = video.shape[2:4]
    if tiled and (height > tiling.sample_height or width > tiling.sample_width):
      return DiagonalGaussian.from_moments(self._tiled(video, tiling, encode=True))
    return DiagonalGaussian.from_moments(self._encode_moments(video))

  # -- decode

  def _decode_step(self, z, cache):
    z = z.astype(self.config.compute_dtype)
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z, cache)

  def _decode_frames(self, latents):
    return _run_chunked(self._decode_step, latents, self.latent_frames_per_chunk).astype(jnp.float32)

  def decode(self, latents: jax.Array, *, tiled: bool = False, tiling: Tiling | None = None) -> jax.Array:
    """latents (B, t, h, w, latent_channels), unscaled -> video (B, T, 8h, 8w, out_channels)."""
    self._check(latents, self.config.latent_channels, "latents")
    tiling = tiling or self.default_tiling()
    factor = self.config.spatial_compression
    height, width = latents.shape[2:4]
    if tiled and (height > tiling.sample_height // factor or width > tiling.sample_width // factor):
      return self._tiled(latents, tiling, encode=False)
    return self._decode_frames(latents)

  # -- tiling (diffusers' tiled_encode / tiled_decode)

  def _tiled(self, x, tiling: Tiling, *, encode: bool):
    factor = self.config.spatial_compression
    sample_h, sample_w = tiling.sample_height, tiling.sample_width
    latent_h, latent_w = int(sample_h / factor), int(sample_w / factor)
    in_h, in_w = (sample_h, sample_w) if encode else (latent_h, latent_w)
    out_h, out_w = (latent_h, latent_w) if encode else (sample_h, sample_w)
    stride_h = int(in_h * (1 - tiling.overlap_factor_height))
    stride_w = int(in_w * (1 - tiling.overlap_factor_width))
    blend_h = int(out_h * tiling.overlap_factor_height)
    blend_w = int(out_w * tiling.overlap_factor_width)
    run = self._encode_moments if encode else self._decode_frames
    height, width = x.shape[2:4]
    rows = [[run(x[:, :, i:i + in_h, j:j + in_w]) for j in range(0, width, stride_w)]
            for i in range(0, height, stride_h)]
    out_rows = []
    for i, row in enumerate(rows):
      out_row = []
      for j, tile in enumerate(row):
        if i > 0:
          tile = _blend(rows[i - 1][j], tile, blend_h, axis=2)
        if j > 0:
          tile = _blend(row[j - 1], tile, blend_w, axis=3)
        row[j] = tile
        out_row.append(tile[:, :, : out_h - blend_h, : out_w - blend_w])
      out_rows.append(jnp.concatenate(out_row, axis=3))
    return jnp.concatenate(out_rows, axis=2)

  def _check(self, x, channels, name):
    if x.ndim != 5 or x.shape[-1] != channels:
      raise WonderlandError(f"{name} must have shape (B, T, H, W, {channels}), got {x.shape}")


def _blend(previous, tile, extent, axis):
  """diffusers' blend_v / blend_h: linear ramp over the first `extent` rows (cols) of `tile`."""
  extent = min(previous.shape[axis], tile.shape[axis], extent)
  if extent <= 0:
    return tile
  weights = (np.arange(extent) / extent).astype(np.float32)
  shape = [1] * tile.ndim
  shape[axis] = extent
  weights = jnp.asarray(weights).reshape(shape)
  head = jax.lax.slice_in_dim(tile, 0, extent, axis=axis)
  tail = jax.lax.slice_in_dim(previous, previous.shape[axis] - extent, previous.shape[axis], axis=axis)
  blended = tail * (1 - weights) + head * weights
  return jnp.concatenate([blended, jax.lax.slice_in_dim(tile, extent, tile.shape[axis], axis=axis)], axis=axis)


def encode_frames(vae: CogVideoXVAE, frames: jax.Array) -> jax.Array:
  """frames (B, F, H, W, 3) in [0, 1] -> scaled latents (B, t, h, w, C): the posterior mean x the scaling factor
  (divided when `invert_scale_latents`), the latent space the video model samples and the LaLRM reads; no
  gradient flows into the VAE. Raises `WonderlandError` for a VAE with a shift factor (CogVideoX's latent space
  is only scaled)."""
  config = vae.config
  if config.shift_factor is not None:
    raise WonderlandError(f"VAE config has shift_factor={config.shift_factor}; only CogVideoX's scaling (no shift) "
                          "is supported")
  return jax.lax.stop_gradient(config.scale_latents(vae.encode(frames * 2 - 1).mean))


def load_vae(settings) -> CogVideoXVAE:
  """The frozen VAE a training config's `vae` block names: a converted checkpoint (`checkpoint`), or one made
  from `random_config` and `seed` (the tiny configs: random but fixed weights, identical in every run)."""
  if settings.get("checkpoint"):
    return checkpoints.load(settings["checkpoint"], kind="cogvideox_vae")
  random_config = settings["random_config"]
  random_config = random_config.to_dict() if hasattr(random_config, "to_dict") else dict(random_config)
  return CogVideoXVAE(VAEConfig.from_diffusers(random_config, where="--config.vae.random_config"),
                      rngs=nnx.Rngs(int(settings["seed"])))


def build(config: dict, rngs: nnx.Rngs) -> CogVideoXVAE:
  """Factory for the checkpoint registry: a JSON config dict (our `VAEConfig.to_dict()`) -> model."""
  return CogVideoXVAE(VAEConfig.from_diffusers(config), rngs=rngs)


register_model("cogvideox_vae", build)
