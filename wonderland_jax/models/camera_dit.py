"""The camera-guided video transformer: CogVideoX plus Wonderland's dual-branch camera conditioning (Sec. 3.1).

    base = checkpoints.load("checkpoints/cogvideox-5b-i2v/transformer")
    model = CameraDiT(base, CameraConfig(branches="dual", controlnet_layers=21, lora_rank=256), rngs=nnx.Rngs(0))
    v = model(latents, text_embeddings, timestep, plucker)   # plucker (B, F, H, W, 6), F = 1 + 4 (t - 1)

The Plücker embedding of the cameras feeds two camera encoders (3D convolutions compressing time 4x and space
8x, unfolded into tokens of the video tokens' layout, then a zero-initialised linear):

  * ControlNet branch: trainable copies of the first N base blocks. Their input is video tokens + camera tokens
    (text tokens as the base's); the output of copy i goes through a zero-initialised linear and is added to
    the output of frozen block i.
  * LoRA branch: concat(video tokens, camera tokens) -> a linear initialised to [identity; 0] feeds the frozen
    main blocks, whose attention projections (and, with `lora_targets=("attn", "ff")`, feed-forward
    projections) carry rank-r adapters with B = 0.

So at initialisation the output equals the base transformer's exactly. Only the branch params are trained
(`BRANCH`, an nnx filter); `branch_params` / `save_branch` / `load` move the branch alone (a small checkpoint),
`merge_lora` folds the adapters into the base kernels for inference. Attribute paths: `base.*` is the converted
CogVideoX transformer unchanged (adapters at `base.transformer_blocks[i].attn1.to_q.lora.lora_{a,b}`), the rest
`control_encoder`, `control_blocks[i]`, `control_out[i]`, `lora_encoder`, `lora_proj`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig, Linear, constrain_streams, run_block
from wonderland_jax.nn.partitioning import axes, param_init_context
from wonderland_jax.nn.remat import rematerialized

BRANCHES = ("dual", "controlnet", "lora")
LORA_TARGETS = ("attn", "ff")
BRANCH_KIND = "camera_dit_branch"


@dataclasses.dataclass(frozen=True)
class CameraConfig:
  """The camera branches on top of a base `DiTConfig` (the paper: dual, N = 21 of 42 blocks, rank 256)."""

  branches: str = "dual"  # dual | controlnet | lora (the paper's ablations)
  controlnet_layers: int = 21
  lora_rank: int = 256
  lora_alpha: float | None = None  # adapter scale = alpha / rank; None = 1
  lora_targets: tuple = ("attn",)  # the main blocks' projections that get adapters: attn, ff
  encoder_channels: int = 128  # width of the camera encoders' 3D convolutions
  spatial_compression: int = 8  # the VAE's: pixels per latent along each image axis

  @classmethod
  def from_dict(cls, config: dict) -> CameraConfig:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
      raise WonderlandError(f"camera branch config: unknown field(s) {unknown}; fields are {sorted(fields)}")
    values = dict(config)
    if "lora_targets" in values:
      values["lora_targets"] = tuple(values["lora_targets"])
    return cls(**values)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def controlnet(self) -> bool:
    return self.branches in ("dual", "controlnet")

  @property
  def lora(self) -> bool:
    return self.branches in ("dual", "lora")

  def validate(self, base: DiTConfig) -> None:
    if self.branches not in BRANCHES:
      raise WonderlandError(f"camera config: branches={self.branches!r}; use one of {BRANCHES}")
    if self.controlnet and not 1 <= self.controlnet_layers <= base.num_layers:
      raise WonderlandError(f"camera config: controlnet_layers={self.controlnet_layers} must be in 1.."
                            f"{base.num_layers} (the base's blocks)")
    if self.lora and self.lora_rank < 1:
      raise WonderlandError(f"camera config: lora_rank={self.lora_rank} must be >= 1")
    bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
    if bad:
      raise WonderlandError(f"camera config: lora_targets {bad} unknown; use some of {LORA_TARGETS}")

  @property
  def lora_scale(self) -> float:
    return 1.0 if self.lora_alpha is None else float(self.lora_alpha) / self.lora_rank


class CameraEncoder(nnx.Module):
  """Plücker rays (B, F, H, W, 6) -> camera tokens (B, S, inner_dim) in the order of the base's video tokens.

  Frame 0 is repeated 3 times in front (as the VAE's causal padding does), a 3D convolution with kernel = stride
  (4, 8, 8) brings the rays to the latent grid, a 3x3x3 convolution mixes neighbours, the (p_t, p, p) patches
  are unfolded into tokens and a linear maps them to the transformer's width: zero-initialised for the ControlNet
  branch (its tokens are added to the video tokens, and the branch's zero-linears after the copied blocks are
  what starts at zero), randomly initialised for the LoRA branch (`zero_output=False`), whose tokens meet the zero
  camera rows of `lora_proj`: were both zero, neither would ever get a gradient."""

  def __init__(self, base: DiTConfig, config: CameraConfig, *, zero_output: bool = True, rngs: nnx.Rngs):
    self.temporal = int(base.temporal_compression_ratio)
    self.spatial = int(config.spatial_compression)
    self.patch, self.patch_t = base.patch_size, base.patch_size_t or 1
    channels = config.encoder_channels
    conv_axes = dict(kernel_metadata=axes(None, None, None, None, None), bias_metadata=axes(None))
    with param_init_context():
      self.down = nnx.Conv(6, channels, (self.temporal, self.spatial, self.spatial),
                           strides=(self.temporal, self.spatial, self.spatial), padding="VALID", dtype=base.dtype,
                           rngs=rngs, **conv_axes)
      self.mix = nnx.Conv(channels, channels, (3, 3, 3), padding="SAME", dtype=base.dtype, rngs=rngs, **conv_axes)
      output_init = dict(kernel_init=nnx.initializers.zeros_init()) if zero_output else {}
      self.proj = Linear(channels * self.patch_t * self.patch ** 2, base.inner_dim, dtype=base.dtype,
                         kernel_metadata=axes(None, "embed"), bias_metadata=axes("embed"), rngs=rngs, **output_init)

  def num_latent_frames(self, num_frames: int) -> int:
    return (num_frames - 1) // self.temporal + 1

  def __call__(self, plucker: jax.Array) -> jax.Array:
    batch, frames, height, width, _ = plucker.shape
    pad = self.temporal - 1
    x = jnp.concatenate([jnp.repeat(plucker[:, :1], pad, axis=1), plucker], axis=1).astype(self.down.dtype)
    x = jax.nn.silu(self.mix(jax.nn.silu(self.down(x))))
    t, h, w, c = x.shape[1:]
    p, p_t = self.patch, self.patch_t
    x = x.reshape(batch, t // p_t, p_t, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return self.proj(x.reshape(batch, -1, p_t * p * p * c))


def _copy(module: nnx.Module) -> nnx.Module:
  copy = nnx.clone(module)
  nnx.update(copy, jax.tree.map(lambda x: jnp.array(x, copy=True), nnx.state(copy, nnx.Param)))
  return copy


def _identity_then_zeros(key, shape, dtype=jnp.float32):
  """A (2D, D) kernel [I; 0]: concat(video, camera) @ kernel = video."""
  del key
  dim = shape[1]
  return jnp.concatenate([jnp.eye(dim, dtype=dtype), jnp.zeros((shape[0] - dim, dim), dtype)], axis=0)


def _lora_layers(block, targets: tuple) -> list[tuple[str, Linear, tuple]]:
  """(name, layer, logical axes of its kernel) of one block's projections that get adapters."""
  layers = []
  if "attn" in targets:
    attention = block.attn1
    layers += [("to_q", attention.to_q, ("embed", "heads")), ("to_k", attention.to_k, ("embed", "heads")),
               ("to_v", attention.to_v, ("embed", "heads")), ("to_out", attention.to_out[0], ("heads", "embed"))]
  if "ff" in targets:
    layers += [("ff_in", block.ff.net[0].proj, ("embed", "mlp")), ("ff_out", block.ff.net[2], ("mlp", "embed"))]
  return layers


class CameraDiT(nnx.Module):
  """See the module docstring. `config` is the base's `DiTConfig` (what samplers read), `camera` the branches'."""

  def __init__(self, base: CogVideoXTransformer, camera: CameraConfig, *, rngs: nnx.Rngs):
    camera.validate(base.config)
    self.base = base
    self.camera = camera
    config = base.config
    dim = config.inner_dim
    with param_init_context():
      if camera.controlnet:
        self.control_encoder = CameraEncoder(config, camera, rngs=rngs)
        # Copies of the base blocks as they are (before adapters are attached to the base), in buffers of
        # their own: trained (and donated) while the base's stay frozen.
        self.control_blocks = nnx.List([_copy(base.transformer_blocks[i]) for i in range(camera.controlnet_layers)])
        self.control_out = nnx.List([
            Linear(dim, dim, dtype=config.dtype, kernel_init=nnx.initializers.zeros_init(),
                   kernel_metadata=axes("embed", "heads"), bias_metadata=axes("heads"), rngs=rngs)
            for _ in range(camera.controlnet_layers)])
      if camera.lora:
        self.lora_encoder = CameraEncoder(config, camera, zero_output=False, rngs=rngs)
        self.lora_proj = Linear(2 * dim, dim, dtype=config.dtype, kernel_init=_identity_then_zeros,
                                kernel_metadata=axes(None, "embed"), bias_metadata=axes("embed"), rngs=rngs)
        for block in base.transformer_blocks:
          for _, layer, names in _lora_layers(block, camera.lora_targets):
            layer.lora = nnx.LoRA(layer.in_features, camera.lora_rank, layer.out_features, dtype=config.dtype,
                                  a_metadata=axes(names[0], None), b_metadata=axes(None, names[1]), rngs=rngs)
            layer.lora_scale = camera.lora_scale

  @property
  def config(self) -> DiTConfig:
    return self.base.config

  def check_plucker(self, latents_shape: tuple, plucker_shape: tuple) -> None:
    batch, frames, height, width, _ = latents_shape
    spatial = self.camera.spatial_compression
    expected = (batch, 1 + int(self.config.temporal_compression_ratio) * (frames - 1), height * spatial,
                width * spatial, 6)
    if tuple(plucker_shape) != expected:
      raise WonderlandError(f"plucker rays must be {expected} for latents {tuple(latents_shape)} (F = 1 + "
                            f"{self.config.temporal_compression_ratio}(t - 1) frames at {spatial}x the latent size),"
                            f" got {tuple(plucker_shape)}")

  def __call__(self, latents: jax.Array, text_embeddings: jax.Array, timestep: jax.Array, plucker: jax.Array,
               ofs: jax.Array | None = None) -> jax.Array:
    """latents (B, t, h, w, in_channels), text (B, L, D_text), timestep (B,), plucker (B, F, 8h, 8w, 6) with
    F = 1 + 4 (t - 1) -> the prediction (B, t, h, w, out_channels) float32."""
    self.check_plucker(latents.shape, plucker.shape)
    base, camera = self.base, self.camera
    video, text, emb, rotary = base.embed(latents, text_embeddings, timestep, ofs)
    run = rematerialized(run_block, base.config.remat)
    if camera.controlnet:
      control_video, control_text = video + self.control_encoder(plucker).astype(video.dtype), text
    if camera.lora:
      video = self.lora_proj(jnp.concatenate([video, self.lora_encoder(plucker).astype(video.dtype)], axis=-1))
    for index, block in enumerate(base.transformer_blocks):
      video, text = run(block, video, text, emb, rotary)
      if camera.controlnet and index < camera.controlnet_layers:
        control_video, control_text = constrain_streams(
            *run(self.control_blocks[index], control_video, control_text, emb, rotary))
        video = video + self.control_out[index](control_video).astype(video.dtype)
      video, text = constrain_streams(video, text)
    return base.unpatchify(video, emb, latents.shape)


def _in_branch(path, value) -> bool:
  del value
  return path[0] != "base" or "lora" in path


# The trainable params: everything outside `base`, plus the adapters inside it.
BRANCH = nnx.All(nnx.Param, _in_branch)


def merge_lora(model: CameraDiT) -> None:
  """Folds every adapter into its base kernel (W += scale * A B) and removes it; the output is unchanged up to
  rounding. In place; the merged model's LoRA params are gone from `branch_params`."""
  for block in model.base.transformer_blocks:
    for _, layer, _ in _lora_layers(block, LORA_TARGETS):
      if layer.lora is None:
        continue
      kernel = layer.kernel.get_value()
      delta = layer.lora.lora_a.get_value().astype(jnp.float32) @ layer.lora.lora_b.get_value().astype(jnp.float32)
      layer.kernel.set_value((kernel.astype(jnp.float32) + layer.lora_scale * delta).astype(kernel.dtype))
      layer.lora = None


def branch_params(model: CameraDiT) -> dict:
  """The branch params (what training changes) as a pure dict."""
  return nnx.to_pure_dict(nnx.state(model, BRANCH))


def save_branch(directory: str | os.PathLike, model: CameraDiT, *, overwrite: bool = False,
                metadata: dict | None = None) -> Path:
  """Writes the branch params alone (a `checkpoints` directory of kind camera_dit_branch), with the camera config
  and the base's config (checked against the base it is loaded onto)."""
  return checkpoints.save(directory, branch_params(model), kind=BRANCH_KIND,
                          config=model_config(model),
                          overwrite=overwrite, metadata=metadata)


# Base config fields a branch checkpoint depends on (the compute settings may differ).
_BASE_FIELDS = ("num_attention_heads", "attention_head_dim", "num_layers", "in_channels", "patch_size",
                "patch_size_t", "temporal_compression_ratio")


def load(base: str | os.PathLike | CogVideoXTransformer, branch: str | os.PathLike, *,
         merge: bool = False) -> CameraDiT:
  """The camera-guided transformer from a converted base (a directory or a loaded transformer) and a branch
  checkpoint written by `save_branch` (or `wonderland train camera-dit`: `<workdir>/model`). `merge` folds the
  adapters into the base kernels."""
  branch = Path(branch)
  kind, config, params = checkpoints.load_params(branch)
  if kind != BRANCH_KIND:
    raise InputFileError(f"{branch}: a {kind!r} checkpoint, not a camera branch ({BRANCH_KIND})")
  if not isinstance(base, CogVideoXTransformer):
    base_dir = base
    base = checkpoints.load(base_dir)
    if not isinstance(base, CogVideoXTransformer):
      raise InputFileError(f"{base_dir}: not a CogVideoX transformer checkpoint")
  mismatched = [f"{name} {config['base'].get(name)} (branch) vs {getattr(base.config, name)} (base)"
                for name in _BASE_FIELDS if config["base"].get(name) != getattr(base.config, name)]
  if mismatched:
    raise InputFileError(f"{branch}: this branch was trained for a different base transformer: "
                         + "; ".join(mismatched))
  model = CameraDiT(base, CameraConfig.from_dict(config["camera"]), rngs=nnx.Rngs(0))
  state = nnx.state(model, BRANCH)
  checkpoints.check_fit(checkpoints.flat_shapes(nnx.to_pure_dict(state)), checkpoints.flat_shapes(params),
                        f"{branch}: branch params do not fit this config", error=InputFileError,
                        mismatch="{key}: stored {found}, model {expected}")
  # Onto the placement the branch was built with (a mesh under `building_on`), in the dtype it was built with.
  built = nnx.to_pure_dict(state)
  params = jax.tree.map(lambda value, like: jax.device_put(jnp.asarray(value, like.dtype), like.sharding),
                        params, built)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  if merge:
    merge_lora(model)
  return model


def build(config: dict, rngs: nnx.Rngs) -> CameraDiT:
  """Factory for the checkpoint registry: {"base": DiTConfig dict, "camera": CameraConfig dict} -> model."""
  base = CogVideoXTransformer(DiTConfig.from_diffusers(config["base"]), rngs=rngs)
  return CameraDiT(base, CameraConfig.from_dict(config["camera"]), rngs=rngs)


def model_config(model: CameraDiT) -> dict:
  return {"base": model.config.to_dict(), "camera": model.camera.to_dict()}


checkpoints.register_model("camera_dit", build)
