"""Training a (small) CogVideoX VAE as a video autoencoder on the training clips' frames.

    wonderland train vae --config configs/vae_tiny.py --workdir runs/vae_tiny

The tiny configs need a VAE whose latents carry the colours (a random one explains a third of the patch
colours, see docs/benchmarks.md); the public CogVideoX VAE is converted, not trained here. Loss: MSE between
the clip and its reconstruction from a posterior sample, plus `loss.kl_weight` x the KL to N(0, I) (mean over
latent elements). `loss.crop` = c (a multiple of 8) trains on a random c x c window of each clip (on the 8-pixel
latent grid) instead of the whole frame: the VAE is convolutional, so the held-out evaluation still runs on
whole frames, and a step costs about (c / size)^2 of a whole-frame one. The trained model (`<workdir>/model`,
kind cogvideox_vae) is what `--config.vae.checkpoint` of the LaLRM configs takes.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval import image_metrics
from wonderland_jax.models.vae import CogVideoXVAE, VAEConfig, python_frame_loop
from wonderland_jax.train.loop import Task

logger = logging.getLogger("wonderland_jax")


def build_vae(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> CogVideoXVAE:
  return CogVideoXVAE(VAEConfig.from_diffusers(config.model.to_dict(), where="--config.model"), rngs=rngs)


def random_crops(frames: jax.Array, key: jax.Array, size: int, grid: int = 8) -> jax.Array:
  """A random size x size window of each clip of `frames` (B, F, H, W, C), its corner on a `grid`-pixel grid."""
  batch, num_frames, height, width, channels = frames.shape
  if size % grid or not 0 < size <= min(height, width):
    raise WonderlandError(f"--config.loss.crop: must be a multiple of {grid} in (0, {min(height, width)}], got {size}")
  corners = jax.random.randint(key, (batch, 2), 0, jnp.array([height - size, width - size]) // grid + 1) * grid
  window = (num_frames, size, size, channels)
  return jax.vmap(lambda clip, yx: jax.lax.dynamic_slice(clip, (0, yx[0], yx[1], 0), window))(frames, corners)


def vae_loss(vae: CogVideoXVAE, batch: dict, key: jax.Array, *, config: ml_collections.ConfigDict):
  frames = batch["frames"]
  crop = config.loss.get("crop")
  if crop:
    key, crop_key = jax.random.split(key)
    frames = random_crops(frames, crop_key, int(crop))
  video = frames * 2 - 1
  with python_frame_loop():  # the chunk scan's gradient is slow on CPU (see python_frame_loop)
    posterior = vae.encode(video)
    reconstruction = vae.decode(posterior.sample(key))
  mse = jnp.mean((reconstruction - video) ** 2)
  kl = 0.5 * jnp.mean(posterior.mean ** 2 + jnp.exp(posterior.logvar) - 1 - posterior.logvar)
  psnr = jnp.mean(image_metrics.psnr((reconstruction + 1) / 2, frames))
  return mse + float(config.loss.kl_weight) * kl, {"mse": mse, "kl": kl, "psnr": psnr}


@nnx.jit
def autoencode(vae: CogVideoXVAE, frames: jax.Array) -> jax.Array:
  """frames (B, F, H, W, 3) in [0, 1] -> the VAE's reconstruction from the posterior mean (not clipped)."""
  return (vae.decode(vae.encode(frames * 2 - 1).mean) + 1) / 2


def vae_task(config: ml_collections.ConfigDict) -> Task:
  from wonderland_jax.data import pipeline  # noqa: PLC0415
  held_out: list = []

  def evaluate(vae, config):
    if not held_out:
      held_out.append(np.stack([clip["frames"] for clip in pipeline.eval_clips(config)]))
    frames = jnp.asarray(held_out[0])
    reconstruction = autoencode(vae, frames)
    scalars = {"psnr": float(jnp.mean(image_metrics.psnr(reconstruction, frames))),
               "ssim": float(jnp.mean(image_metrics.ssim(reconstruction, frames)))}
    return scalars, {"reconstruction_vs_input": np.concatenate([reconstruction[0, 0], frames[0, 0]], axis=1)}

  def export(vae, config, directory: Path):
    checkpoints.save(directory, vae, kind="cogvideox_vae", config=vae.config.to_dict(), overwrite=True,
                     metadata={"trained_with": config.to_dict()})

  return Task(name="vae", build_model=build_vae, loss_fn=functools.partial(vae_loss, config=config),
              make_iterator=pipeline.make_train_iterator, evaluate=evaluate, export=export)
