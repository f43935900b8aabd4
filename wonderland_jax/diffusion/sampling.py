"""Image-to-video sampling with CogVideoX (diffusers' `CogVideoXImageToVideoPipeline`, latents out).

    latents = sample_image_to_video(transformer, scheduler_config, image_latents, prompt_embeds,
                                    negative_prompt_embeds, num_latent_frames=13, num_inference_steps=50,
                                    guidance_scale=6.0, key=jax.random.key(0))

The loop is one jitted step (model evaluation with classifier-free guidance + scheduler update) under a Python
loop with a progress bar. As in the pipeline: the image latents (VAE posterior *sample*, times the VAE's
scaling factor) are padded with zeros along time and concatenated to the noisy latents along channels; the
guided batch is [negative; positive]; DPM steps draw fresh noise every step.

CogVideoX 1.5 (`patch_size_t`) as the pipeline runs it: the latent frames are padded to a whole number of
temporal patches by `additional_frames` more frames (the image latents stay in frame 0), the I2V model gets
`ofs` = 2.0, and the first `additional_frames` denoised frames are dropped (see `padded_latent_frames`).

Camera control (`models.camera_dit.CameraDiT`): pass `plucker` (B, 1 + 4 (F - 1), 8h, 8w, 6), the Plücker rays
of the frames actually sampled; the transformer gets them as its 4th argument, in both halves of the guided
batch (the camera is a condition of the video, not of the prompt, so only the text differs between the halves).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.diffusion.guidance import guidance_scales, uses_guidance
from wonderland_jax.diffusion.schedulers import SchedulerConfig, init_state, make_tables, step, timesteps
from wonderland_jax.errors import WonderlandError
from wonderland_jax.progress import progress


def encode_image(vae, image: jax.Array, noise: jax.Array, *, tiled: bool = False) -> jax.Array:
  """The pipeline's image latents: image (B, H, W, 3) in [-1, 1] -> (B, 1, h, w, C) = posterior sample times
  the VAE's scaling factor (divided by it when `invert_scale_latents`). `noise` (B, 1, h, w, C) ~ N(0, 1).
  tiled: diffusers' spatial tiling (`CogVideoXVAE.encode`), for large images on accelerators."""
  posterior = vae.encode(image[:, None].astype(jnp.dtype(vae.config.dtype)), tiled=tiled)
  mean, std = posterior.mean.astype(jnp.float32), posterior.std.astype(jnp.float32)
  return vae.config.scale_latents(mean + std * noise)


# The I2V pipeline's `ofs` for CogVideoX 1.5 I2V transformers (those with an ofs embedding).
OFS = 2.0


def padded_latent_frames(num_latent_frames: int, patch_size_t: int | None) -> tuple[int, int]:
  """(frames sampled, additional_frames) for a video of `num_latent_frames` latent frames, as
  `CogVideoXImageToVideoPipeline` pads them for CogVideoX 1.5: `additional_frames` are the frames up to a whole
  number of temporal patches (the pipeline adds 4 x that many video frames). Its `prepare_latents` then adds
  (frames % patch_size_t) more, which is 0 after that padding (kept to follow it; see `_condition`). The
  first `additional_frames` of the sampled latents are dropped at the end."""
  if not patch_size_t:
    return num_latent_frames, 0
  additional = (patch_size_t - num_latent_frames % patch_size_t) % patch_size_t
  padded = num_latent_frames + additional
  return padded + padded % patch_size_t, additional


def _condition(image_latents: jax.Array, num_latent_frames: int, patch_size_t: int | None) -> jax.Array:
  """The pipeline's `prepare_latents` image latents for `padded_latent_frames(num_latent_frames, patch_size_t)`:
  the image in frame 0 and zeros after, over the padded frames; for 1.5, their first (padded % patch_size_t)
  frames repeated in front (none, since the padding makes whole patches)."""
  batch, _, height, width, channels = image_latents.shape
  padded = num_latent_frames + padded_latent_frames(num_latent_frames, patch_size_t)[1]
  condition = jnp.concatenate(
      [image_latents, jnp.zeros((batch, padded - 1, height, width, channels), image_latents.dtype)], 1)
  first = condition[:, :padded % patch_size_t] if patch_size_t else condition[:, :0]
  return jnp.concatenate([first, condition], 1)


def _check_shapes(transformer, image_latents, prompt_embeds, negative_prompt_embeds, num_latent_frames):
  config = transformer.config
  if image_latents.ndim != 5 or image_latents.shape[1] != 1:
    raise WonderlandError(f"image_latents must be (B, 1, h, w, C), got {image_latents.shape}")
  if 2 * image_latents.shape[-1] != config.in_channels:
    raise WonderlandError(f"the transformer takes {config.in_channels} channels = 2 x latent channels; the image "
                          f"latents have {image_latents.shape[-1]}")
  if num_latent_frames < 1:
    raise WonderlandError(f"num_latent_frames={num_latent_frames} must be at least 1; 49 frames = 13 latent frames")
  if config.use_learned_positional_embeddings:
    expected = (config.sample_height, config.sample_width)
    if tuple(image_latents.shape[2:4]) != expected:
      raise WonderlandError(f"this transformer only generates at {expected[0]}x{expected[1]} latents "
                            f"({8 * expected[0]}x{8 * expected[1]} pixels); got {image_latents.shape[2:4]}")
  if negative_prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
    raise WonderlandError(f"negative_prompt_embeds {negative_prompt_embeds.shape} must match prompt_embeds "
                          f"{prompt_embeds.shape}")


def _check_plucker(transformer, latents_shape: tuple, plucker: jax.Array) -> None:
  """The camera transformer's own check (`CameraDiT.check_plucker`) when it has one, else the layout alone:
  (B, F, H, W, 6) with the latents' batch size."""
  if hasattr(transformer, "check_plucker"):
    transformer.check_plucker(latents_shape, plucker.shape)
  elif plucker.ndim != 5 or plucker.shape[-1] != 6 or plucker.shape[0] != latents_shape[0]:
    raise WonderlandError(f"plucker rays must be (B={latents_shape[0]}, F, H, W, 6) for latents "
                          f"{tuple(latents_shape)}, got {tuple(plucker.shape)}")


@functools.partial(jax.jit, static_argnames=("graphdef", "guided", "num_inference_steps"))
def _denoise_step(graphdef, params, tables, latents, state, condition, context, timestep, scale, noise, ofs,
                  plucker=None, *, guided: bool, num_inference_steps: int):
  """One guided model evaluation and scheduler update; compiled once per model and shapes, not per call.
  `plucker` (None: no camera argument) is already the guided batch's, like `condition` and `context`."""
  model = nnx.merge(graphdef, params)
  model_input = jnp.concatenate([latents, latents], 0) if guided else latents
  model_input = jnp.concatenate([model_input, condition.astype(model_input.dtype)], -1)
  timestep_batch = jnp.full((model_input.shape[0],), timestep)
  cameras = () if plucker is None else (plucker,)
  prediction = model(model_input, context, timestep_batch, *cameras, ofs=ofs).astype(jnp.float32)
  if guided:
    uncond, cond = jnp.split(prediction, 2, axis=0)
    prediction = uncond + scale * (cond - uncond)
  return step(tables, state, prediction, timestep, latents, num_inference_steps=num_inference_steps, noise=noise)


def sample_image_to_video(transformer, scheduler_config: SchedulerConfig, image_latents: jax.Array,
                          prompt_embeds: jax.Array, negative_prompt_embeds: jax.Array | None = None, *,
                          num_latent_frames: int = 13, num_inference_steps: int = 50, guidance_scale: float = 6.0,
                          use_dynamic_cfg: bool = False, key: jax.Array, latents: jax.Array | None = None,
                          step_noise=None, plucker: jax.Array | None = None) -> jax.Array:
  """Denoises video latents (B, num_latent_frames, h, w, C) conditioned on the first frame's latents.

  image_latents: (B, 1, h, w, C), already scaled (`encode_image`). prompt_embeds / negative_prompt_embeds:
  (B, L, D_text) (negative defaults to zeros, i.e. an empty prompt's embeddings must be passed to match the
  pipeline). latents: the initial noise (default drawn from `key`), (B, F, h, w, C) with F the frames actually
  sampled: num_latent_frames, or for CogVideoX 1.5 `padded_latent_frames(num_latent_frames, patch_size_t)[0]`
  (the pipeline's latent shape). step_noise: optional callable step_index -> noise of that shape for the DPM
  scheduler (default drawn from `key`); tests use it to replay diffusers' draws. plucker: the camera condition
  of a camera-guided transformer (`CameraDiT`), (B, 1 + 4 (F - 1), 8h, 8w, 6) float with F the frames actually
  sampled, as for `latents`; None for a plain transformer.
  """
  _check_shapes(transformer, image_latents, prompt_embeds, negative_prompt_embeds, num_latent_frames)
  config = transformer.config
  batch, _, height, width, channels = image_latents.shape
  frames, additional = padded_latent_frames(num_latent_frames, config.patch_size_t)
  shape = (batch, frames, height, width, channels)
  init_key, noise_key = jax.random.split(key)
  if latents is None:
    latents = jax.random.normal(init_key, shape, jnp.float32)
  elif tuple(latents.shape) != shape:
    raise WonderlandError(f"latents (the initial noise) must be {shape} for {num_latent_frames} latent frames"
                          + (f" ({additional} padding frame(s) for patch_size_t={config.patch_size_t})"
                             if additional else "") + f"; got {tuple(latents.shape)}")
  condition = _condition(image_latents, num_latent_frames, config.patch_size_t)
  if plucker is not None:
    plucker = jnp.asarray(plucker, jnp.float32)
    _check_plucker(transformer, shape, plucker)
  ofs = jnp.full((1,), OFS, jnp.float32) if config.ofs_embed_dim else None
  guided = uses_guidance(guidance_scale)
  if guided:
    negative = jnp.zeros_like(prompt_embeds) if negative_prompt_embeds is None else negative_prompt_embeds
    context = jnp.concatenate([negative, prompt_embeds], 0)
    condition = jnp.concatenate([condition, condition], 0)
    plucker = None if plucker is None else jnp.concatenate([plucker, plucker], 0)
  else:
    context = prompt_embeds
  schedule = timesteps(scheduler_config, num_inference_steps)
  scales = guidance_scales(guidance_scale, schedule, use_dynamic_cfg=use_dynamic_cfg)
  tables = make_tables(scheduler_config)
  graphdef, params = nnx.split(transformer)

  state = init_state(latents)
  dpm = scheduler_config.kind == "CogVideoXDPMScheduler"
  for index in progress(range(len(schedule)), desc="sampling"):
    noise = None
    if dpm:
      noise = (step_noise(index) if step_noise is not None
               else jax.random.normal(jax.random.fold_in(noise_key, index), latents.shape, jnp.float32))
    latents, state = _denoise_step(graphdef, params, tables, latents, state, condition, context,
                                   jnp.int32(schedule[index]), np.float32(scales[index]), noise, ofs, plucker,
                                   guided=guided, num_inference_steps=num_inference_steps)
  return latents[:, additional:]
