"""Classifier-free guidance as diffusers' `CogVideoXImageToVideoPipeline` applies it.

    scales = guidance_scales(6.0, ts, use_dynamic_cfg=True)        # host float64, one per step
    noise_pred = classifier_free_guidance(model_fn, latents, cond, uncond, scales[i],
                                          image_latents=image_latents)

The pipeline runs the model once on a doubled batch, unconditional half first: latents [x; x] (with the
image latents [y; y] concatenated on the channel axis for I2V) and text embeddings [negative; positive];
it casts the prediction to float32, splits it into (uncond, text) and returns uncond + s (text - uncond).
Guidance happens only when the base `guidance_scale > 1` (otherwise one un-doubled conditional pass).

Dynamic CFG (`use_dynamic_cfg=True`) replaces s at every step by
    s_t = 1 + g (1 - cos(pi ((n - t) / n) ** 5)) / 2,    n = num_inference_steps, t = the training timestep
(float64 on the host, as the pipeline's Python math does). Note that t is the training timestep (e.g. 999),
not the step index, so ((n - t) / n) ** 5 is a large negative number for most steps and s_t jumps around in
[1, 1 + g] from step to step; this is diffusers' behaviour, reproduced as is. Precompute the per-step scales
with `guidance_scales` and feed them to a jitted loop: float32 cosines of such arguments would be wrong.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax.errors import WonderlandError


def guided(noise_pred_uncond, noise_pred_text, guidance_scale) -> jax.Array:
  """uncond + guidance_scale * (text - uncond) (any broadcastable shapes; the scale may be traced)."""
  return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


def _concrete_int(value, name: str) -> int:
  try:
    return int(np.asarray(value).item())
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
    raise TypeError(f"{name} must be concrete for dynamic guidance (precompute the scales with "
                    "guidance_scales() outside jit)") from e


def dynamic_guidance_scale(guidance_scale: float, timestep, num_inference_steps: int) -> float:
  """The pipeline's `use_dynamic_cfg` scale at training timestep `timestep` (a concrete int):
  1 + g * (1 - cos(pi * ((n - t) / n) ** 5.0)) / 2 in Python float64."""
  n = int(num_inference_steps)
  if n < 1:
    raise WonderlandError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
  t = _concrete_int(timestep, "timestep")
  return 1 + float(guidance_scale) * ((1 - math.cos(math.pi * ((n - t) / n) ** 5.0)) / 2)


def guidance_scales(guidance_scale: float, timesteps, *, use_dynamic_cfg: bool = False) -> np.ndarray:
  """float64 (len(timesteps),): the scale the pipeline applies at each step of `timesteps` (the full schedule;
  its length is the pipeline's num_inference_steps). Constant `guidance_scale` unless `use_dynamic_cfg`."""
  if guidance_scale < 0:
    raise WonderlandError(f"guidance_scale must be >= 0, got {guidance_scale}")
  ts = np.asarray(timesteps).reshape(-1)
  if not use_dynamic_cfg:
    return np.full(ts.shape, float(guidance_scale), np.float64)
  return np.asarray([dynamic_guidance_scale(guidance_scale, t, len(ts)) for t in ts], np.float64)


def uses_guidance(guidance_scale: float) -> bool:
  """The pipeline's `do_classifier_free_guidance`: the *base* scale (before any dynamic CFG) exceeds 1."""
  return float(guidance_scale) > 1.0


def classifier_free_guidance(model_fn: Callable[[jax.Array, Any], jax.Array], latents, cond, uncond,
                             guidance_scale, *, image_latents=None, channel_axis: int = -1, dynamic: bool = False,
                             timestep=None, num_inference_steps: int | None = None) -> jax.Array:
  """One guided model evaluation, batched as the pipeline does it.

  model_fn(latent_model_input, context) -> prediction, where latent_model_input is (2B, ...) = [latents;
    latents], with [image_latents; image_latents] appended along `channel_axis` when `image_latents` is given
    (so C_in = C + C_image; pipeline order: noisy latents first), and context is the pytree
    [uncond; cond] (leaves concatenated on axis 0). Close over the timestep and anything else.
  latents: (B, ...); image_latents: like latents except on `channel_axis`; cond / uncond: pytrees of (B, ...).
  guidance_scale: the base scale g (or a per-step scale from `guidance_scales`, possibly traced). If it is a
    concrete number <= 1 there is no guidance: one pass on (latents, cond), B rows, no doubling.
  dynamic: apply the dynamic-CFG formula to g at `timestep` (concrete) with `num_inference_steps`.

  Returns the float32 guided prediction (B, ...), model output shape.
  """
  concrete = isinstance(guidance_scale, (int, float, np.number))
  if concrete and not uses_guidance(guidance_scale):
    model_input = latents if image_latents is None else jnp.concatenate([latents, image_latents], channel_axis)
    return jnp.asarray(model_fn(model_input, cond), jnp.float32)
  scale = guidance_scale
  if dynamic:
    if timestep is None or num_inference_steps is None:
      raise TypeError("dynamic guidance needs timestep= and num_inference_steps=")
    scale = dynamic_guidance_scale(guidance_scale, timestep, num_inference_steps)
  model_input = jnp.concatenate([latents, latents], 0)
  if image_latents is not None:
    model_input = jnp.concatenate([model_input, jnp.concatenate([image_latents, image_latents], 0)], channel_axis)
  context = jax.tree.map(lambda u, c: jnp.concatenate([u, c], 0), uncond, cond)
  prediction = jnp.asarray(model_fn(model_input, context), jnp.float32)
  noise_pred_uncond, noise_pred_text = jnp.split(prediction, 2, axis=0)
  return guided(noise_pred_uncond, noise_pred_text, scale)
