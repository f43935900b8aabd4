"""CogVideoX's video diffusion transformer (diffusers `CogVideoXTransformer3DModel`) in Flax NNX, channels-last.

    dit = CogVideoXTransformer(DiTConfig.from_diffusers(config_json), rngs=nnx.Rngs(0))
    out = dit(latents, text_embeddings, timestep)   # (B, t, h, w, C_in), (B, L, D_text), (B,) -> (B, t, h, w, C_out)

Attribute paths mirror diffusers (`transformer_blocks[3].attn1.to_q`, `ff.net[2]`), so the converter
(`wonderland_jax/convert/cogvideox_transformer.py`) is a short rule table. The rotary tables (what diffusers'
pipelines pass as `image_rotary_emb`) and the sin-cos positional embeddings are computed inside from the
input's shape, exactly as the CogVideoX pipelines compute them, and cached per shape (they are constants).

CogVideoX 1.0 (2B, 5B, 5B-I2V) and 1.5 (`patch_size_t`: a linear embedding of (p_t, p, p) patches, 'slice'
rotary grids; the 1.5 I2V model adds the `ofs` embedding) configs build. For training, `DiTConfig.remat`
names the rematerialisation policy applied to each transformer block (`nn.remat.REMAT_POLICIES`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from wonderland_jax.checkpoints import register_model
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.common import config_values
from wonderland_jax.nn.attention import IMPLEMENTATIONS
from wonderland_jax.nn.partitioning import axes, constrain, param_init_context
from wonderland_jax.nn.remat import ATTENTION, remat_policy, rematerialized
from wonderland_jax.nn.sequence_parallel import METHODS as SEQUENCE_PARALLEL
from wonderland_jax.nn.sequence_parallel import sequence_parallel_attention


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The fields of diffusers' `CogVideoXTransformer3DModel` config.json, plus our compute settings."""

  num_attention_heads: int = 30
  attention_head_dim: int = 64
  in_channels: int = 16
  out_channels: int | None = 16
  flip_sin_to_cos: bool = True
  freq_shift: int = 0
  time_embed_dim: int = 512
  ofs_embed_dim: int | None = None
  text_embed_dim: int = 4096
  num_layers: int = 30
  dropout: float = 0.0
  attention_bias: bool = True
  sample_width: int = 90
  sample_height: int = 60
  sample_frames: int = 49
  patch_size: int = 2
  patch_size_t: int | None = None
  temporal_compression_ratio: int = 4
  max_text_seq_length: int = 226
  activation_fn: str = "gelu-approximate"
  timestep_activation_fn: str = "silu"
  norm_elementwise_affine: bool = True
  norm_eps: float = 1e-5
  spatial_interpolation_scale: float = 1.875
  temporal_interpolation_scale: float = 1.0
  use_rotary_positional_embeddings: bool = False
  use_learned_positional_embeddings: bool = False
  patch_bias: bool = True
  dtype: str = "float32"  # compute dtype of the matmuls (params stay float32; norms and softmax in float32)
  attention: str = "xla"  # wonderland_jax.nn.attention implementation
  sequence_parallel: str = "none"  # none | ulysses | ring over the mesh's 'context' axis (nn.sequence_parallel)
  remat: str = "none"  # rematerialisation policy per transformer block, a key of nn.remat.REMAT_POLICIES

  @classmethod
  def from_diffusers(cls, config: dict, **overrides) -> DiTConfig:
    config = cls(**config_values(cls, config, "transformer", **overrides))
    config.validate()
    return config

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    if not self.use_rotary_positional_embeddings and self.use_learned_positional_embeddings:
      raise WonderlandError("transformer config: learned positional embeddings need rotary embeddings (as diffusers)")
    if self.activation_fn != "gelu-approximate" or self.timestep_activation_fn != "silu":
      raise WonderlandError("transformer config: only activation_fn 'gelu-approximate' and timestep_activation_fn "
                            f"'silu' are supported, got {self.activation_fn!r}, {self.timestep_activation_fn!r}")
    remat_policy(self.remat, "transformer config")
    if self.attention not in IMPLEMENTATIONS:
      raise WonderlandError(f"transformer config: attention {self.attention!r} is not one of {IMPLEMENTATIONS}")
    if self.sequence_parallel not in SEQUENCE_PARALLEL:
      raise WonderlandError(f"transformer config: sequence_parallel {self.sequence_parallel!r} is not one of "
                            f"{SEQUENCE_PARALLEL}")

  @property
  def inner_dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @property
  def output_channels(self) -> int:
    return self.out_channels or self.in_channels


def constrain_streams(video: jax.Array, text: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Pins the two token streams between blocks: video (B, S, D) to ("batch", "length", None), text (B, L, D) to
  ("batch", None, None). Both are needed: left free, XLA may keep the text stream replicated over the batch axes,
  and with rematerialisation every device then recomputes the text tokens of the whole global batch."""
  return constrain(video, "batch", "length", None), constrain(text, "batch", None, None)


def run_block(block, video, text, temb, rotary):
  """One transformer block (a function, so `nn.remat.rematerialized` can wrap it)."""
  return block(video, text, temb, rotary)


# ------------------------------------------------------------------------------ constant embeddings (numpy)


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding (B,) -> (B, dim) float32, diffusers' `get_timestep_embedding`."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  angles = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


@functools.lru_cache(maxsize=32)
def sincos_positional_embedding(dim: int, height: int, width: int, frames: int, spatial_scale: float,
                                temporal_scale: float) -> np.ndarray:
  """(frames * height * width, dim) float32: diffusers' get_3d_sincos_pos_embed on a (height, width) patch grid
  (temporal quarter first, then the spatial 3/4 whose first half follows the width coordinate)."""
  spatial_dim, temporal_dim = 3 * dim // 4, dim // 4
  grid_h = np.arange(height, dtype=np.float32) / np.float32(spatial_scale)
  grid_w = np.arange(width, dtype=np.float32) / np.float32(spatial_scale)
  w_coords, h_coords = np.meshgrid(grid_w, grid_h, indexing="xy")  # (height, width) each
  spatial = np.concatenate([_sincos_1d(spatial_dim // 2, w_coords), _sincos_1d(spatial_dim // 2, h_coords)], 1)
  temporal = _sincos_1d(temporal_dim, np.arange(frames, dtype=np.float32) / np.float32(temporal_scale))
  embedding = np.concatenate([np.repeat(temporal[:, None], height * width, 1),
                              np.repeat(spatial[None], frames, 0)], axis=-1)
  return embedding.reshape(frames * height * width, dim).astype(np.float32)


def _rotary_1d(dim: int, positions: np.ndarray, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
  freqs = (1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float32)
  angles = np.outer(positions.astype(np.float32), freqs).astype(np.float32)
  return np.repeat(np.cos(angles), 2, axis=1), np.repeat(np.sin(angles), 2, axis=1)


def _crop_region(grid_height: int, grid_width: int, base_width: int, base_height: int):
  """diffusers' get_resize_crop_region_for_grid."""
  if grid_height / grid_width > base_height / base_width:
    resize_height, resize_width = base_height, int(round(base_height / grid_height * grid_width))
  else:
    resize_width, resize_height = base_width, int(round(base_width / grid_width * grid_height))
  top, left = int(round((base_height - resize_height) / 2.0)), int(round((base_width - resize_width) / 2.0))
  return (top, left), (top + resize_height, left + resize_width)


@functools.lru_cache(maxsize=32)
def rotary_tables(head_dim: int, frames: int, grid_height: int, grid_width: int, base_height: int,
                  base_width: int, sliced: bool) -> tuple[np.ndarray, np.ndarray]:
  """(cos, sin), each (frames * grid_height * grid_width, head_dim) float32, as the CogVideoX pipelines build
  them (`get_3d_rotary_pos_embed`): 'linspace' grids over the crop region for CogVideoX 1.0, 'slice' grids for
  1.5 (`sliced`). The head dim splits into time 1/4, height 3/8, width 3/8."""
  if sliced:
    grid_t = np.arange(frames, dtype=np.float32)
    grid_h = np.arange(max(base_height, grid_height), dtype=np.float32)[:grid_height]
    grid_w = np.arange(max(base_width, grid_width), dtype=np.float32)[:grid_width]
  else:
    (top, left), (bottom, right) = _crop_region(grid_height, grid_width, base_width, base_height)
    grid_h = np.linspace(top, bottom * (grid_height - 1) / grid_height, grid_height, dtype=np.float32)
    grid_w = np.linspace(left, right * (grid_width - 1) / grid_width, grid_width, dtype=np.float32)
    grid_t = np.linspace(0, frames * (frames - 1) / frames, frames, dtype=np.float32)
  dim_t, dim_h = head_dim // 4, head_dim // 8 * 3
  parts = [_rotary_1d(dim_t, grid_t), _rotary_1d(dim_h, grid_h), _rotary_1d(dim_h, grid_w)]
  tables = []
  for which in (0, 1):
    t, h, w = (part[which] for part in parts)
    shape = (frames, grid_height, grid_width)
    table = np.concatenate([np.broadcast_to(t[:, None, None], shape + t.shape[-1:]),
                            np.broadcast_to(h[None, :, None], shape + h.shape[-1:]),
                            np.broadcast_to(w[None, None, :], shape + w.shape[-1:])], axis=-1)
    tables.append(table.reshape(-1, table.shape[-1]))
  return tables[0], tables[1]


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Interleaved-pair rotary embedding on x (B, S, N, D) with cos, sin (S, D), in float32."""
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  out = x.astype(jnp.float32) * cos[None, :, None, :] + rotated * sin[None, :, None, :]
  return out.astype(x.dtype)


# ----------------------------------------------------------------------------------------------- layers


class Linear(nnx.Linear):
  """nnx.Linear with an optional low-rank adapter: y = x W + b + lora_scale * (x A) B when `lora` is set
  (`models/camera_dit.py` attaches camera-LoRA adapters to the frozen blocks this way; the base's param paths
  stay those of the checkpoints)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.lora: nnx.LoRA | None = nnx.data(None)
    self.lora_scale = 1.0

  def __call__(self, x):
    y = super().__call__(x)
    if self.lora is None:
      return y
    return y + (self.lora(x) * self.lora_scale).astype(y.dtype)


def _linear(in_dim, out_dim, config: DiTConfig, rngs, names: tuple, use_bias=True):
  return Linear(in_dim, out_dim, use_bias=use_bias, dtype=config.dtype, kernel_metadata=axes(*names),
                bias_metadata=axes(names[-1]), rngs=rngs)


def _layer_norm(dim, eps, affine, rngs, name="embed"):
  return nnx.LayerNorm(dim, epsilon=eps, use_bias=affine, use_scale=affine, dtype=jnp.float32,
                       use_fast_variance=False, scale_metadata=axes(name), bias_metadata=axes(name), rngs=rngs)


def _norm(layer, x):
  return layer(x.astype(jnp.float32)).astype(x.dtype)


class TimestepEmbedding(nnx.Module):
  def __init__(self, in_dim: int, out_dim: int, config: DiTConfig, *, rngs: nnx.Rngs):
    self.linear_1 = _linear(in_dim, out_dim, config, rngs, (None, None))
    self.linear_2 = _linear(out_dim, out_dim, config, rngs, (None, None))

  def __call__(self, x):
    return self.linear_2(jax.nn.silu(self.linear_1(x)))


class PatchEmbed(nnx.Module):
  """Text projection, video patchification (2D conv per frame, or a linear over (p_t, p, p) patches for 1.5),
  and the optional sin-cos / learned positional embedding."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.config = config
    p, dim = config.patch_size, config.inner_dim
    if config.patch_size_t is None:
      self.proj = nnx.Conv(config.in_channels, dim, (p, p), strides=p, padding="VALID", use_bias=config.patch_bias,
                           dtype=config.dtype, kernel_metadata=axes(None, None, None, "embed"),
                           bias_metadata=axes("embed"), rngs=rngs)
    else:
      self.proj = _linear(config.in_channels * p * p * config.patch_size_t, dim, config, rngs, (None, "embed"))
    self.text_proj = _linear(config.text_embed_dim, dim, config, rngs, (None, "embed"))
    if config.use_learned_positional_embeddings:
      self.pos_embedding = nnx.Param(jnp.asarray(self._sincos(config.sample_height, config.sample_width,
                                                              config.sample_frames))[None],
                                        **axes(None, None, "embed"))

  def _sincos(self, height, width, frames) -> np.ndarray:
    config = self.config
    grid = sincos_positional_embedding(
        config.inner_dim, height // config.patch_size, width // config.patch_size,
        (frames - 1) // config.temporal_compression_ratio + 1, config.spatial_interpolation_scale,
        config.temporal_interpolation_scale)
    return np.concatenate([np.zeros((config.max_text_seq_length, config.inner_dim), np.float32), grid], 0)

  def __call__(self, text, video):
    config = self.config
    batch, frames, height, width, channels = video.shape
    p = config.patch_size
    text = self.text_proj(text)
    if config.patch_size_t is None:
      tokens = self.proj(video.reshape(batch * frames, height, width, channels))
      tokens = tokens.reshape(batch, -1, tokens.shape[-1])
    else:
      p_t = config.patch_size_t
      patches = video.reshape(batch, frames // p_t, p_t, height // p, p, width // p, p, channels)
      patches = patches.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(batch, -1, channels * p_t * p * p)
      tokens = self.proj(patches)
    embeds = jnp.concatenate([text, tokens.astype(text.dtype)], axis=1)
    if config.use_rotary_positional_embeddings and not config.use_learned_positional_embeddings:
      return embeds
    if config.use_learned_positional_embeddings and (height, width) != (config.sample_height, config.sample_width):
      raise WonderlandError(f"this transformer's learned positional embedding is for {config.sample_height}x"
                            f"{config.sample_width} latents; got {height}x{width}")
    full_frames = (frames - 1) * config.temporal_compression_ratio + 1
    if config.use_learned_positional_embeddings and full_frames == config.sample_frames:
      position = self.pos_embedding[...]
    else:
      position = jnp.asarray(self._sincos(height, width, full_frames))[None]
    return embeds + position.astype(embeds.dtype)


class LayerNormZero(nnx.Module):
  """CogVideoXLayerNormZero: one LayerNorm, separate shift / scale / gate for the video and text streams."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.linear = _linear(config.time_embed_dim, 6 * config.inner_dim, config, rngs, (None, "embed"))
    self.norm = _layer_norm(config.inner_dim, config.norm_eps, config.norm_elementwise_affine, rngs)

  def __call__(self, video, text, temb):
    shift, scale, gate, text_shift, text_scale, text_gate = jnp.split(self.linear(jax.nn.silu(temb)), 6, axis=-1)
    video = _norm(self.norm, video) * (1 + scale[:, None]) + shift[:, None]
    text = _norm(self.norm, text) * (1 + text_scale[:, None]) + text_shift[:, None]
    return video, text, gate[:, None], text_gate[:, None]


class Attention(nnx.Module):
  """Joint text+video self-attention with QK LayerNorm; rotary on the video tokens only."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    dim, head_dim = config.inner_dim, config.attention_head_dim
    self.heads, self.implementation = config.num_attention_heads, config.attention
    self.sequence_parallel = config.sequence_parallel
    self.to_q = _linear(dim, dim, config, rngs, ("embed", "heads"), config.attention_bias)
    self.to_k = _linear(dim, dim, config, rngs, ("embed", "heads"), config.attention_bias)
    self.to_v = _linear(dim, dim, config, rngs, ("embed", "heads"), config.attention_bias)
    self.norm_q = _layer_norm(head_dim, 1e-6, True, rngs, None)
    self.norm_k = _layer_norm(head_dim, 1e-6, True, rngs, None)
    self.to_out = nnx.List([_linear(dim, dim, config, rngs, ("heads", "embed"))])

  def __call__(self, video, text, rotary):
    text_length = text.shape[1]
    x = jnp.concatenate([text, video], axis=1)
    split_heads = lambda y: y.reshape(*y.shape[:2], self.heads, -1)
    query = _norm(self.norm_q, split_heads(self.to_q(x)))
    key = _norm(self.norm_k, split_heads(self.to_k(x)))
    value = split_heads(self.to_v(x))
    if rotary is not None:
      cos, sin = rotary
      query = jnp.concatenate([query[:, :text_length], apply_rotary(query[:, text_length:], cos, sin)], axis=1)
      key = jnp.concatenate([key[:, :text_length], apply_rotary(key[:, text_length:], cos, sin)], axis=1)
    out = sequence_parallel_attention(query, key, value, method=self.sequence_parallel,
                                      implementation=self.implementation)
    out = checkpoint_name(out, ATTENTION)
    out = self.to_out[0](out.reshape(*out.shape[:2], -1))
    return out[:, text_length:], out[:, :text_length]


class GELUProjection(nnx.Module):
  def __init__(self, dim: int, inner: int, config: DiTConfig, *, rngs: nnx.Rngs):
    self.proj = _linear(dim, inner, config, rngs, ("embed", "mlp"))

  def __call__(self, x):
    return jax.nn.gelu(self.proj(x), approximate=True)


class FeedForward(nnx.Module):
  """diffusers' FeedForward: net = [GELU(proj), Dropout, Linear] (indices as in the checkpoints)."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    dim = config.inner_dim
    self.net = nnx.List([GELUProjection(dim, 4 * dim, config, rngs=rngs), nnx.Dropout(0.0),
                         _linear(4 * dim, dim, config, rngs, ("mlp", "embed"))])

  def __call__(self, x):
    return self.net[2](self.net[0](x))


class Block(nnx.Module):
  """CogVideoXBlock: adaptive-norm attention over [text, video], then a shared feed-forward, both gated."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.norm1 = LayerNormZero(config, rngs=rngs)
    self.attn1 = Attention(config, rngs=rngs)
    self.norm2 = LayerNormZero(config, rngs=rngs)
    self.ff = FeedForward(config, rngs=rngs)

  def __call__(self, video, text, temb, rotary):
    norm_video, norm_text, gate, text_gate = self.norm1(video, text, temb)
    attn_video, attn_text = self.attn1(norm_video, norm_text, rotary)
    video = video + gate * attn_video
    text = text + text_gate * attn_text
    norm_video, norm_text, gate, text_gate = self.norm2(video, text, temb)
    ff = self.ff(jnp.concatenate([norm_text, norm_video], axis=1))
    text_length = text.shape[1]
    return video + gate * ff[:, text_length:], text + text_gate * ff[:, :text_length]


class AdaLayerNorm(nnx.Module):
  """The output norm: LayerNorm(x) * (1 + scale) + shift with (shift, scale) = linear(silu(temb))."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.linear = _linear(config.time_embed_dim, 2 * config.inner_dim, config, rngs, (None, "embed"))
    self.norm = _layer_norm(config.inner_dim, config.norm_eps, config.norm_elementwise_affine, rngs)

  def __call__(self, x, temb):
    shift, scale = jnp.split(self.linear(jax.nn.silu(temb)), 2, axis=-1)
    return _norm(self.norm, x) * (1 + scale[:, None]) + shift[:, None]


class CogVideoXTransformer(nnx.Module):
  """See the module docstring."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    config.validate()
    self.config = config
    dim = config.inner_dim
    with param_init_context():
      self.patch_embed = PatchEmbed(config, rngs=rngs)
      self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim, config, rngs=rngs)
      self.ofs_embedding = (TimestepEmbedding(config.ofs_embed_dim, config.ofs_embed_dim, config, rngs=rngs)
                            if config.ofs_embed_dim else None)
      self.transformer_blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
      self.norm_final = _layer_norm(dim, config.norm_eps, config.norm_elementwise_affine, rngs)
      self.norm_out = AdaLayerNorm(config, rngs=rngs)
      patch_volume = config.patch_size ** 2 * (config.patch_size_t or 1)
      self.proj_out = _linear(dim, patch_volume * config.output_channels, config, rngs, ("embed", None))

  def rotary(self, frames: int, height: int, width: int):
    """The (cos, sin) tables for latents of (frames, height, width), or None without rotary embeddings."""
    config = self.config
    if not config.use_rotary_positional_embeddings:
      return None
    p, p_t = config.patch_size, config.patch_size_t
    cos, sin = rotary_tables(config.attention_head_dim, frames if p_t is None else -(-frames // p_t),
                             height // p, width // p, config.sample_height // p, config.sample_width // p,
                             sliced=p_t is not None)
    return jnp.asarray(cos), jnp.asarray(sin)

  def __call__(self, latents: jax.Array, text_embeddings: jax.Array, timestep: jax.Array,
               ofs: jax.Array | None = None) -> jax.Array:
    """latents (B, t, h, w, in_channels), text_embeddings (B, L, text_embed_dim), timestep (B,) -> (B, t, h, w,
    out_channels): the model's prediction (v for CogVideoX)."""
    video, text, emb, rotary = self.embed(latents, text_embeddings, timestep, ofs)
    run = rematerialized(run_block, self.config.remat)
    for block in self.transformer_blocks:
      video, text = constrain_streams(*run(block, video, text, emb, rotary))
    return self.unpatchify(video, emb, latents.shape)

  def embed(self, latents: jax.Array, text_embeddings: jax.Array, timestep: jax.Array, ofs: jax.Array | None = None):
    """The blocks' inputs: (video tokens (B, S, D), text tokens (B, L, D), time embedding (B, time_embed_dim),
    rotary tables or None). `__call__` = embed, the blocks, `unpatchify`."""
    config = self.config
    batch, frames, height, width, channels = latents.shape
    if channels != config.in_channels:
      raise WonderlandError(f"latents have {channels} channels, the transformer expects {config.in_channels}")
    if height % config.patch_size or width % config.patch_size or frames % (config.patch_size_t or 1):
      raise WonderlandError(f"latents of {frames}x{height}x{width} are not divisible by the patch size "
                            f"{config.patch_size_t or 1}x{config.patch_size}x{config.patch_size}")
    dtype = jnp.dtype(config.dtype)
    timestep = jnp.broadcast_to(jnp.asarray(timestep), (batch,))
    emb = self.time_embedding(timestep_embedding(timestep, config.inner_dim, config.flip_sin_to_cos,
                                                 config.freq_shift).astype(dtype))
    if self.ofs_embedding is not None:
      if ofs is None:
        raise WonderlandError("this transformer (CogVideoX 1.5 I2V) needs the `ofs` input")
      ofs = jnp.broadcast_to(jnp.asarray(ofs), (batch,))
      emb = emb + self.ofs_embedding(timestep_embedding(ofs, config.ofs_embed_dim, config.flip_sin_to_cos,
                                                        config.freq_shift).astype(dtype))
    hidden = self.patch_embed(text_embeddings.astype(dtype), latents.astype(dtype))
    text_length = text_embeddings.shape[1]
    video, text = constrain_streams(hidden[:, text_length:], hidden[:, :text_length])
    return video, text, emb, self.rotary(frames, height, width)

  def unpatchify(self, video: jax.Array, emb: jax.Array, latents_shape: tuple) -> jax.Array:
    """The blocks' video tokens -> the prediction (B, t, h, w, out_channels) float32 for latents of that shape."""
    config = self.config
    batch, frames, height, width, _ = latents_shape
    video = self.proj_out(self.norm_out(_norm(self.norm_final, video), emb))
    p, p_t, c = config.patch_size, config.patch_size_t or 1, config.output_channels
    out = video.reshape(batch, frames // p_t, height // p, width // p, c, p_t, p, p)
    out = out.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(batch, frames, height, width, c)
    return out.astype(jnp.float32)


def build(config: dict, rngs: nnx.Rngs) -> CogVideoXTransformer:
  return CogVideoXTransformer(DiTConfig.from_diffusers(config), rngs=rngs)


register_model("cogvideox_transformer", build)
