"""The Latent Large Reconstruction Model (LaLRM, Wonderland sec. 3.3 and appendix D) in Flax NNX.

    lalrm = LaLRM(LaLRMConfig(...), rngs=nnx.Rngs(0))
    gaussian_map = lalrm(latents, plucker)        # (B, t, h, w, 16), (B, F, H, W, 6) -> (B, F, H', W', 12)
    scene = to_gaussians(gaussian_map[0], cameras) # pixel-aligned splat.Gaussians, N = F * H' * W'

Tokens. Video latents are patchified spatially with patch p (no time patching): one token per (latent frame,
p x p latent patch), p*p*16 channels. The Plücker rays of the F = 1 + 4(t - 1) frames are patchified by a
3D convolution with kernel = stride = (4, 8p, 8p) -- the VAE's compression times the latent patch -- so both
token sets have length t * (h/p) * (w/p). Time alignment: the VAE encodes frame 0 alone and every later
latent from 4 frames, so the rays get 3 copies of frame 0 in front (F + 3 = 4t frames, as the VAE's causal
padding does); latent i then meets the rays of frames 4i-3 .. 4i (frame 0 only for i = 0).

Trunk. Both token sets are concatenated along channels and projected to the hidden size, then a chain of
GS-LRM transformer blocks (pre-LayerNorm, no biases, MLP ratio 4, head dim 64, no positional embedding:
the rays are the position) and a final LayerNorm.

Decoding. A 3D transposed convolution with kernel = stride = (4, s, s) maps each token to a 4 x s x s block
of 12-channel Gaussian features; s = 8p gives one Gaussian per pixel (the paper's low-resolution stage),
s = 4p one per 2x2 pixels (its high-resolution stage). Non-overlapping, it is exactly a linear layer to
4*s*s*12 channels followed by a depth-to-space rearrangement, which is how it is computed (`deconv`, kernel
(hidden, 4*s*s*12) in (time, row, column, channel) order). The time axis is 4t long; its first 3 entries
belong to the padding copies and are dropped, leaving F frames.

Gaussian map channels: RGB 0:3, scale 3:6, rotation 6:10 (wxyz), opacity 10, distance along the ray 11;
`to_gaussians` documents the activations.
"""

from __future__ import annotations

import dataclasses
import functools

import einops
import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from wonderland_jax.camera.camera import Camera
from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR, conditioning_rays, normalize_poses, renormalization
from wonderland_jax.camera.rays import ray_bundle
from wonderland_jax.checkpoints import register_model
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.common import config_values
from wonderland_jax.nn.attention import IMPLEMENTATIONS
from wonderland_jax.nn.partitioning import constrain, param_init_context, partitioned
from wonderland_jax.nn.remat import ATTENTION, remat_policy, rematerialized
from wonderland_jax.nn.sequence_parallel import METHODS as SEQUENCE_PARALLEL
from wonderland_jax.nn.sequence_parallel import sequence_parallel_attention
from wonderland_jax.splat.gaussians import Gaussians

GAUSSIAN_CHANNELS = 12


@dataclasses.dataclass(frozen=True)
class LaLRMConfig:
  """Architecture, Gaussian activations and compute settings. Defaults: the paper's low-resolution model."""

  latent_channels: int = 16
  patch_size: int = 2  # spatial patch on the latents (the paper's mild p = 2)
  temporal_compression: int = 4  # the VAE's
  spatial_compression: int = 8  # the VAE's
  pose_dim: int = 1024  # channels of the pose tokens before the joint projection
  hidden_size: int = 1024
  num_layers: int = 24
  head_dim: int = 64
  mlp_ratio: int = 4
  gaussian_stride: int = 16  # spatial stride of the deconv: 8p one Gaussian per pixel, 4p per 2x2 pixels
  norm_eps: float = 1e-5
  init_std: float = 0.02
  # Gaussian activations (see to_gaussians).
  scale_bias: float = 2.3
  max_log_scale: float = -1.2
  opacity_bias: float = 2.0
  near: float = 0.1
  far: float = 20.0
  dtype: str = "float32"  # compute dtype of the matmuls; norms, softmax and the output in float32
  attention: str = "xla"
  sequence_parallel: str = "none"  # none | ulysses | ring over the mesh's 'context' axis (nn.sequence_parallel)
  remat: str = "none"

  @classmethod
  def from_dict(cls, config: dict, **overrides) -> LaLRMConfig:
    config = cls(**config_values(cls, config, "lalrm", **overrides))
    config.validate()
    return config

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    if self.hidden_size % self.head_dim:
      raise WonderlandError(f"lalrm config: hidden_size {self.hidden_size} is not a multiple of head_dim "
                            f"{self.head_dim}")
    token_stride = self.spatial_compression * self.patch_size
    if self.gaussian_stride < 1 or token_stride % self.gaussian_stride:
      raise WonderlandError(f"lalrm config: gaussian_stride {self.gaussian_stride} must divide the token stride "
                            f"{token_stride} (= spatial_compression x patch_size)")
    if self.attention not in IMPLEMENTATIONS:
      raise WonderlandError(f"lalrm config: attention {self.attention!r} is not one of {IMPLEMENTATIONS}")
    remat_policy(self.remat, "lalrm config")
    if self.sequence_parallel not in SEQUENCE_PARALLEL:
      raise WonderlandError(f"lalrm config: sequence_parallel {self.sequence_parallel!r} is not one of "
                            f"{SEQUENCE_PARALLEL}")
    if not self.near < self.far:
      raise WonderlandError(f"lalrm config: near {self.near} must be below far {self.far}")

  @property
  def map_downsample(self) -> int:
    """Pixels per Gaussian along each image axis (1 = one Gaussian per pixel)."""
    return self.spatial_compression * self.patch_size // self.gaussian_stride

  def num_frames(self, num_latent_frames: int) -> int:
    return 1 + self.temporal_compression * (num_latent_frames - 1)


def _linear(in_dim: int, out_dim: int, names: tuple, config: LaLRMConfig, rngs: nnx.Rngs, use_bias=False):
  return nnx.Linear(in_dim, out_dim, use_bias=use_bias, dtype=config.dtype,
                    kernel_init=partitioned(nnx.initializers.normal(config.init_std), *names),
                    bias_init=partitioned(nnx.initializers.zeros_init(), names[-1]), rngs=rngs)


def _layer_norm(dim: int, config: LaLRMConfig, rngs: nnx.Rngs):
  return nnx.LayerNorm(dim, epsilon=config.norm_eps, use_bias=False, dtype=jnp.float32,
                       scale_init=partitioned(nnx.initializers.ones_init(), "embed"), rngs=rngs)


def _norm(layer, x):
  return layer(x.astype(jnp.float32)).astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, config: LaLRMConfig, *, rngs: nnx.Rngs):
    dim = config.hidden_size
    self.num_heads, self.implementation = dim // config.head_dim, config.attention
    self.sequence_parallel = config.sequence_parallel
    self.qkv = _linear(dim, 3 * dim, ("embed", "heads"), config, rngs)
    self.out = _linear(dim, dim, ("heads", "embed"), config, rngs)

  def __call__(self, x):
    query, key, value = jnp.split(self.qkv(x), 3, axis=-1)
    split = lambda y: einops.rearrange(y, "b l (n d) -> b l n d", n=self.num_heads)
    out = sequence_parallel_attention(split(query), split(key), split(value), method=self.sequence_parallel,
                                      implementation=self.implementation)
    out = checkpoint_name(out, ATTENTION)
    return self.out(einops.rearrange(out, "b l n d -> b l (n d)"))


class MLP(nnx.Module):
  def __init__(self, config: LaLRMConfig, *, rngs: nnx.Rngs):
    dim = config.hidden_size
    self.fc1 = _linear(dim, config.mlp_ratio * dim, ("embed", "mlp"), config, rngs)
    self.fc2 = _linear(config.mlp_ratio * dim, dim, ("mlp", "embed"), config, rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """GS-LRM's transformer block: x + attn(LN(x)), then x + mlp(LN(x)); no biases."""

  def __init__(self, config: LaLRMConfig, *, rngs: nnx.Rngs):
    self.norm1 = _layer_norm(config.hidden_size, config, rngs)
    self.attn = Attention(config, rngs=rngs)
    self.norm2 = _layer_norm(config.hidden_size, config, rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(_norm(self.norm1, x))
    return x + self.mlp(_norm(self.norm2, x))


def _run_block(block, x):
  return block(x)


class LaLRM(nnx.Module):
  """See the module docstring."""

  def __init__(self, config: LaLRMConfig, *, rngs: nnx.Rngs):
    config.validate()
    self.config = config
    p, stride = config.patch_size, config.spatial_compression * config.patch_size
    with param_init_context():
      self.pose_embed = nnx.Conv(
          6, config.pose_dim, (config.temporal_compression, stride, stride),
          strides=(config.temporal_compression, stride, stride), padding="VALID", dtype=config.dtype,
          kernel_init=partitioned(nnx.initializers.normal(config.init_std), None, None, None, None, "embed"),
          bias_init=partitioned(nnx.initializers.zeros_init(), "embed"), rngs=rngs)
      self.input_proj = _linear(p * p * config.latent_channels + config.pose_dim, config.hidden_size,
                                (None, "embed"), config, rngs)
      self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
      self.norm_out = _layer_norm(config.hidden_size, config, rngs)
      s = config.gaussian_stride
      self.deconv = _linear(config.hidden_size, config.temporal_compression * s * s * GAUSSIAN_CHANNELS,
                            ("embed", None), config, rngs, use_bias=True)

  def check_inputs(self, latents_shape: tuple, plucker_shape: tuple) -> None:
    config = self.config
    if len(latents_shape) != 5 or latents_shape[-1] != config.latent_channels:
      raise WonderlandError(f"latents must be (B, t, h, w, {config.latent_channels}), got {latents_shape}")
    batch, t, h, w, _ = latents_shape
    frames = config.num_frames(t)
    expected = (batch, frames, h * config.spatial_compression, w * config.spatial_compression, 6)
    if tuple(plucker_shape) != expected:
      raise WonderlandError(f"plucker rays must be {expected} for latents {latents_shape} (F = 1 + "
                            f"{config.temporal_compression}(t - 1), {config.spatial_compression}x the latent "
                            f"size), got {tuple(plucker_shape)}")
    if h % config.patch_size or w % config.patch_size:
      raise WonderlandError(f"latents of {h}x{w} are not divisible by the patch size {config.patch_size}")

  def __call__(self, latents: jax.Array, plucker: jax.Array) -> jax.Array:
    """latents (B, t, h, w, C), plucker (B, F, H, W, 6) -> Gaussian map (B, F, H', W', 12) float32 with
    H' = H / map_downsample (see the module docstring)."""
    config = self.config
    self.check_inputs(latents.shape, plucker.shape)
    dtype = jnp.dtype(config.dtype)
    batch, t, h, w, _ = latents.shape
    p, s = config.patch_size, config.gaussian_stride
    latent_tokens = einops.rearrange(latents.astype(dtype), "b t (h p) (w q) c -> b (t h w) (p q c)", p=p, q=p)
    padding = jnp.repeat(plucker[:, :1], config.temporal_compression - 1, axis=1)
    pose = self.pose_embed(jnp.concatenate([padding, plucker], axis=1).astype(dtype))
    pose_tokens = einops.rearrange(pose, "b t h w c -> b (t h w) c")
    x = self.input_proj(jnp.concatenate([latent_tokens, pose_tokens.astype(dtype)], axis=-1))
    x = constrain(x, "batch", "length", None)
    block_fn = rematerialized(_run_block, config.remat)
    for block in self.blocks:
      x = constrain(block_fn(block, x), "batch", "length", None)
    x = self.deconv(_norm(self.norm_out, x)).astype(jnp.float32)
    gaussian_map = einops.rearrange(x, "b (t h w) (a p q c) -> b (t a) (h p) (w q) c", t=t, h=h // p, w=w // p,
                                    a=config.temporal_compression, p=s, q=s)
    return gaussian_map[:, config.temporal_compression - 1:]


def to_gaussians(gaussian_map: jax.Array, cameras: Camera, config: LaLRMConfig) -> Gaussians:
  """Pixel-aligned Gaussians from one clip's Gaussian map.

  Args:
    gaussian_map: (F, H', W', 12) from `LaLRM` (one batch element).
    cameras: the clip's F cameras (batch shape (F,)) at any resolution with the same field of view; rays are
      cast through the pixel centres of the cameras resized to (W', H').
    config: the activation constants.

  Returns N = F * H' * W' Gaussians (frame-major, then row, column) with
    means     = o + distance * d, o the camera centre, d the unit ray through the pixel centre;
    distance  = near + (far - near) * sigmoid(raw), bounded to the scene's depth range;
    scales    = exp(min(raw - scale_bias, max_log_scale)) (GS-LRM / Long-LRM: 2.3 and -1.2, so a raw 0
                gives 0.1 and no Gaussian grows beyond 0.30 scene units);
    opacities = sigmoid(raw - opacity_bias) (raw 0 gives 0.12, GS-LRM's bias 2);
    quats     = (raw + (1, 0, 0, 0)) / |.|, wxyz: a raw 0 is the identity, never a zero quaternion;
    colors    = sigmoid(raw) RGB in (0, 1).
  """
  frames, height, width, channels = gaussian_map.shape
  if channels != GAUSSIAN_CHANNELS or cameras.batch_shape != (frames,):
    raise WonderlandError(f"to_gaussians: expected a (F, H', W', {GAUSSIAN_CHANNELS}) map and F cameras, got "
                          f"{gaussian_map.shape} and cameras of batch shape {cameras.batch_shape}")
  raw = gaussian_map.astype(jnp.float32)
  origins, directions = ray_bundle(cameras.resized(width, height))
  distance = config.near + (config.far - config.near) * jax.nn.sigmoid(raw[..., 11:12])
  quats = raw[..., 6:10] + jnp.array([1.0, 0.0, 0.0, 0.0])
  quats = quats / jnp.maximum(jnp.linalg.norm(quats, axis=-1, keepdims=True), 1e-8)
  flat = lambda x: x.reshape(frames * height * width, *x.shape[3:])
  return Gaussians(
      means=flat(origins + distance * directions),
      quats=flat(quats),
      scales=flat(jnp.exp(jnp.minimum(raw[..., 3:6] - config.scale_bias, config.max_log_scale))),
      opacities=flat(jax.nn.sigmoid(raw[..., 10] - config.opacity_bias)),
      colors=flat(jax.nn.sigmoid(raw[..., 0:3])))


def predict(lalrm: LaLRM, latents: jax.Array, viewmats: jax.Array, intrinsics: jax.Array, height: int, width: int, *,
            scale_mode: str = "max_distance", scale_target: float = 1.0,
            scale_floor: float = DEFAULT_SCALE_FLOOR) -> tuple[jax.Array, Gaussians]:
  """latents (B, t, h, w, C) + the seen frames' cameras (B, F, 4, 4) world->camera, (B, F, 3, 3) at (height,
  width) -> (Gaussian maps, Gaussians batched over B). The LaLRM reads `camera.conditioning_rays` of the cameras
  (re-based on the first, normalised with the settings it trained with); the Gaussians are in that normalised
  first-camera frame (training clips arrive normalised already, so there it is the data's frame). Cameras that
  are normalised already (training clips, `reconstruct_latents`) come with `camera.renormalization` of the
  settings, which leaves them as they are (the same settings but for 'extent_floor')."""
  normalize = functools.partial(normalize_poses, mode=scale_mode, target=scale_target, floor=scale_floor)
  rays = functools.partial(conditioning_rays, **renormalization(scale_mode, scale_target, scale_floor))
  cameras = Camera(viewmat=jax.vmap(normalize)(viewmats)[0], K=intrinsics, width=width, height=height)
  gaussian_map = lalrm(latents, jax.vmap(rays)(cameras))
  gaussians = jax.vmap(functools.partial(to_gaussians, config=lalrm.config))(gaussian_map, cameras)
  return gaussian_map, gaussians


def build(config: dict, rngs: nnx.Rngs) -> LaLRM:
  return LaLRM(LaLRMConfig.from_dict(config), rngs=rngs)


register_model("lalrm", build)
