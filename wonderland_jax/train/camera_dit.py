"""Training the camera branches of the camera-guided transformer on posed video clips (the base stays frozen).

    wonderland train camera-dit --config configs/camera_dit_tiny.py --workdir runs/camera_dit_tiny
    wonderland train camera-dit --config configs/camera_dit_5b.py --workdir runs/camera_dit \
        --config.base.pipeline=checkpoints/cogvideox-5b-i2v --config.data.root=/data/re10k/train

The objective is CogVideoX's image-to-video fine-tuning objective: the clip's latents x0 (a VAE posterior
sample times the scaling factor), t uniform over the training timesteps, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
with the scheduler's (zero-terminal-SNR) alphas, and the loss mean((v_pred - v)^2) with v = sqrt(abar) eps -
sqrt(1 - abar) x0. (diffusers' CogVideoX fine-tuning scripts weight the x0 error by 1 / (1 - abar), which is
this same v error.) The image condition is the clip's first frame with the recipe's noise augmentation
(sigma = exp(N(image_noise_mean, image_noise_std)) per clip, added to the frame in [-1, 1] before encoding),
encoded, scaled and padded with zero latents along time, concatenated in channels. Text: by default one
prompt's embeddings (`text.prompt`) for every clip (real camera datasets carry no captions), computed once (T5
of the base pipeline) and cached in `text.embeddings` (.npz), or zeros without a text encoder (the tiny config).
With `text.captions` (a JSON-lines file of scene id -> prompt, `train.captions`) each clip gets its scene's
caption (scenes without one: `text.prompt`): every distinct prompt is embedded once (cached beside
`text.embeddings`) and each batch carries its clips' embeddings as `text_embeds` (B, L, D) from the host. Either
way a clip's text is replaced by the empty prompt's embeddings with probability `text.dropout` so
classifier-free guidance works. The cameras become Plücker rays in the first camera's frame (the data pipeline
re-bases and scales the poses).

Trainable: the branch params (`camera_dit.BRANCH`); the base's params are frozen (no gradients, no optimizer
state) and stored in `base.param_dtype` (bfloat16 for the 5B model). With `base.trainable=True` every param of
the camera DiT trains, base included (in float32: the tiny demo's base learns the synthetic clips). The export
(`<workdir>/model`) is the branch alone (`camera_dit.save_branch`); with a random base (tiny config) or a
trained one (`base.trainable`) the base is written next to it (`<workdir>/base_transformer`, kind
`cogvideox_transformer`) so `camera_dit.load(base, branch)` and `wonderland generate-video` can use it.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.camera.camera import Camera
from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR, conditioning_rays
from wonderland_jax.diffusion.schedulers import SchedulerConfig, add_noise, get_velocity, make_tables
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_path
from wonderland_jax.models import camera_dit
from wonderland_jax.models.camera_dit import BRANCH, CameraConfig, CameraDiT
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig
from wonderland_jax.models.vae import load_vae
from wonderland_jax.nn.abstract import abstract_build
from wonderland_jax.train.captions import ClipCaptions
from wonderland_jax.train.config import pose_normalization, step_pose_normalization
from wonderland_jax.train.loop import Task

logger = logging.getLogger("wonderland_jax")

# The scheduler of CogVideoX-5B-I2V (its scheduler_config.json fields): v-prediction, zero terminal SNR.
COGVIDEOX_I2V_SCHEDULER = dict(_class_name="CogVideoXDDIMScheduler", num_train_timesteps=1000, beta_start=0.00085,
                               beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                               set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                               rescale_betas_zero_snr=True, snr_shift_scale=1.0, timestep_spacing="trailing")


class Constant(nnx.Variable):
  """Arrays the step reads but never trains (the cached text embeddings)."""


class CameraDiTTrainee(nnx.Module):
  """What the loop trains: the camera-guided transformer (its branches), the frozen VAE and the cached text
  embeddings (prompt, empty prompt)."""

  def __init__(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs):
    base = load_base(config, rngs)
    self.dit = CameraDiT(base, CameraConfig.from_dict(config.camera.to_dict()), rngs=rngs)
    if not base_trainable(config):
      _cast_frozen(self.dit, str(config.base.get("param_dtype", "float32")))
    self.vae = load_vae(_vae_settings(config))
    prompt, empty = text_embeddings(config, base.config)
    self.prompt_embeds, self.empty_embeds = Constant(jnp.asarray(prompt)), Constant(jnp.asarray(empty))
    latent_channels = self.vae.config.latent_channels
    if 2 * latent_channels != base.config.in_channels:
      raise WonderlandError(f"the base transformer takes {base.config.in_channels} channels; the VAE's latents have "
                            f"{latent_channels} (image-to-video needs 2 x latent channels)")


def base_trainable(config: ml_collections.ConfigDict) -> bool:
  """`base.trainable`: the base transformer trains with the branches (default False: frozen)."""
  return bool(config.base.get("trainable", False))


def _pipeline_dir(config) -> Path | None:
  return Path(config.base.pipeline) if config.base.get("pipeline") else None


def load_base(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> CogVideoXTransformer:
  """The base transformer: `<base.pipeline>/transformer` (a `wonderland convert cogvideox` folder), or a random
  one from `base.random_config` and `base.seed` (identical in every run, so it need not be checkpointed)."""
  directory = _pipeline_dir(config)
  del rngs  # the base's weights come from its checkpoint or its own seed
  # Compute settings from the config (the same params in any of them).
  overrides = {key: config.base[key] for key in ("dtype", "attention", "remat", "sequence_parallel")
               if config.base.get(key)}
  if directory is None:
    return CogVideoXTransformer(DiTConfig.from_diffusers(config.base.random_config.to_dict(), **overrides),
                                rngs=nnx.Rngs(int(config.base.seed)))
  base = checkpoints.load(directory / "transformer")
  if not isinstance(base, CogVideoXTransformer):
    raise InputFileError(f"{directory / 'transformer'}: not a CogVideoX transformer checkpoint")
  if overrides:
    model_config = DiTConfig.from_diffusers(base.config.to_dict(), **overrides)
    model = abstract_build(lambda: CogVideoXTransformer(model_config, rngs=nnx.Rngs(0)))
    nnx.update(model, nnx.state(base))
    base = model
  return base


def _vae_settings(config) -> dict:
  """The VAE: `vae.checkpoint`, else the base pipeline's VAE, else the random one of `vae.random_config`."""
  directory = _pipeline_dir(config)
  settings = config.vae.to_dict()
  if not settings.get("checkpoint") and directory is not None:
    settings["checkpoint"] = str(directory / "vae")
  return settings


def _cast_frozen(model: CameraDiT, dtype: str) -> None:
  """Stores the frozen base params in `dtype` (the branch params stay float32)."""
  if jnp.dtype(dtype) == jnp.float32:
    return
  frozen = nnx.state(model, nnx.All(nnx.Param, nnx.Not(BRANCH)))
  nnx.update(model, jax.tree.map(lambda x: x.astype(dtype), frozen))


def scheduler_config(config: ml_collections.ConfigDict) -> SchedulerConfig:
  """The base pipeline's scheduler_config.json, else `config.scheduler`."""
  directory = _pipeline_dir(config)
  if directory is not None:
    path = directory / "scheduler" / "scheduler_config.json"
    try:
      return SchedulerConfig.from_diffusers(json.loads(path.read_text()))
    except FileNotFoundError:
      raise InputFileError(f"{path}: not found (convert the pipeline with its scheduler)") from None
  return SchedulerConfig.from_diffusers(config.scheduler.to_dict())


def text_embeddings(config: ml_collections.ConfigDict, base: DiTConfig) -> tuple[np.ndarray, np.ndarray]:
  """(prompt, empty prompt) embeddings, each (L, D_text): read from `text.embeddings` (.npz with `prompt` and
  `empty`) when it exists; else computed with the base pipeline's T5 and tokenizer (and written there when
  set); else zeros."""
  shape = (base.max_text_seq_length, base.text_embed_dim)
  cache = Path(config.text.embeddings) if config.text.get("embeddings") else None
  if cache is not None and cache.exists():
    with np.load(cache) as stored:
      if "prompt" not in stored or "empty" not in stored:
        raise InputFileError(f"{cache}: needs arrays 'prompt' and 'empty', has {sorted(stored)}")
      prompt, empty = stored["prompt"], stored["empty"]
    if prompt.shape != shape or empty.shape != shape:
      raise InputFileError(f"{cache}: embeddings of shape {prompt.shape}, {empty.shape}; this base needs {shape}")
    return prompt.astype(np.float32), empty.astype(np.float32)
  directory = _pipeline_dir(config)
  if directory is None:
    logger.info("camera-dit: no text encoder (--config.base.pipeline unset): zero text embeddings")
    return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
  from wonderland_jax.models.t5 import encode_prompt  # noqa: PLC0415
  from wonderland_jax.models.t5_tokenizer import T5Tokenizer  # noqa: PLC0415
  tokenizer = T5Tokenizer.from_folder(directory / "tokenizer")
  encoder = checkpoints.load(directory / "text_encoder")
  embeds = np.asarray(encode_prompt(tokenizer, encoder, [str(config.text.prompt), ""], base.max_text_seq_length))
  prompt, empty = embeds[0], embeds[1]
  if cache is not None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as temporary:
      with open(temporary, "wb") as handle:
        np.savez(handle, prompt=prompt, empty=empty)
    logger.info("camera-dit: cached the text embeddings in %s", cache)
  return prompt, empty


def clip_plucker(viewmats: jax.Array, intrinsics: jax.Array, height: int, width: int, *, scale_mode: str,
                 scale_target: float, scale_floor: float = DEFAULT_SCALE_FLOOR) -> jax.Array:
  """Cameras of a batch of clips (B, F, 4, 4), (B, F, 3, 3) -> their conditioning rays (B, F, H, W, 6), exactly
  as sampling computes them (`camera.conditioning_rays`)."""
  rays = functools.partial(conditioning_rays, scale_mode=scale_mode, scale_target=scale_target,
                           scale_floor=scale_floor)
  return jax.vmap(lambda v, k: rays(Camera(viewmat=v, K=k, width=width, height=height)))(viewmats, intrinsics)


def encode(vae, video: jax.Array, key: jax.Array) -> jax.Array:
  """video (B, F, H, W, 3) in [-1, 1] -> scaled latents (a posterior sample, as the fine-tuning recipe)."""
  return jax.lax.stop_gradient(vae.config.scale_latents(vae.encode(video).sample(key)))


def diffusion_inputs(model: CameraDiTTrainee, batch: dict, key: jax.Array, *, tables, config, timesteps=None):
  """(model input (B, t, h, w, 2C), text (B, L, D), timesteps (B,), plucker, target v). The text is the batch's
  `text_embeds` (B, L, D) (per-clip captions) when it has them, else the fixed prompt's embeddings; each clip's
  is replaced by the empty prompt's with probability `text.dropout`."""
  frames = batch["frames"]
  batch_size = frames.shape[0]
  keys = jax.random.split(key, 6)
  video = frames * 2 - 1
  latents = encode(model.vae, video, keys[0])
  sigma = jnp.exp(float(config.objective.image_noise_mean)
                  + float(config.objective.image_noise_std) * jax.random.normal(keys[1], (batch_size,)))
  image = video[:, :1] + sigma[:, None, None, None, None] * jax.random.normal(keys[2], video[:, :1].shape)
  image_latents = encode(model.vae, image, keys[3])
  condition = jnp.concatenate([image_latents, jnp.zeros_like(latents[:, 1:])], axis=1)
  if timesteps is None:
    timesteps = jax.random.randint(keys[4], (batch_size,), 0, tables.num_train_timesteps)
  noise = jax.random.normal(keys[5], latents.shape)
  noisy = add_noise(tables, latents, noise, timesteps)
  target = get_velocity(tables, latents, noise, timesteps)
  drop = jax.random.uniform(jax.random.fold_in(key, 7), (batch_size,)) < float(config.text.dropout)
  prompt = batch["text_embeds"] if "text_embeds" in batch else model.prompt_embeds[...][None]
  text = jnp.where(drop[:, None, None], model.empty_embeds[...][None], prompt)
  height, width = frames.shape[2:4]
  plucker = clip_plucker(batch["viewmats"], batch["intrinsics"], height, width, **step_pose_normalization(config))
  return jnp.concatenate([noisy, condition], axis=-1), text, timesteps, plucker, target


def _ofs(model: CameraDiTTrainee):
  from wonderland_jax.diffusion.sampling import OFS  # noqa: PLC0415
  return jnp.full((1,), OFS, jnp.float32) if model.dit.config.ofs_embed_dim else None


def camera_dit_loss(model: CameraDiTTrainee, batch: dict, key: jax.Array, *, config: ml_collections.ConfigDict,
                    tables):
  """(loss, metrics): the v-prediction MSE (module docstring)."""
  model_input, text, timesteps, plucker, target = diffusion_inputs(model, batch, key, tables=tables, config=config)
  prediction = model.dit(model_input, text, timesteps, plucker, ofs=_ofs(model))
  loss = jnp.mean((prediction - target) ** 2)
  return loss, {"v_mse": loss}


@functools.partial(nnx.jit, static_argnames=("config_json",))
def _eval_loss(model, batch, key, timesteps, tables, config_json):
  config = ml_collections.ConfigDict(json.loads(config_json))
  config.text.dropout = 0.0
  model_input, text, timesteps, plucker, target = diffusion_inputs(model, batch, key, tables=tables, config=config,
                                                                   timesteps=timesteps)
  prediction = model.dit(model_input, text, timesteps, plucker, ofs=_ofs(model))
  return jnp.mean((prediction - target) ** 2)


# Held-out evaluation: the v-MSE at these fractions of the training timesteps, with fixed noise.
EVAL_TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def evaluate_loss(model: CameraDiTTrainee, batch: dict, config: ml_collections.ConfigDict, tables) -> dict:
  """The held-out v-MSE averaged over `EVAL_TIMESTEP_FRACTIONS` (same noise every call: comparable across
  steps), and without the cameras' information (the rays of the first frame everywhere) for contrast. `batch`:
  frames, viewmats, intrinsics and optionally the clips' caption embeddings `text_embeds`."""
  batch = {key: jnp.asarray(batch[key]) for key in ("frames", "viewmats", "intrinsics", "text_embeds")
           if key in batch}
  config_json = json.dumps(config.to_dict(), sort_keys=True, default=list)
  key = jax.random.key(int(config.data.eval_seed))
  blind = dict(batch, viewmats=jnp.broadcast_to(batch["viewmats"][:, :1], batch["viewmats"].shape))
  losses, blind_losses = [], []
  for fraction in EVAL_TIMESTEP_FRACTIONS:
    timesteps = jnp.full((batch["frames"].shape[0],), int(fraction * tables.num_train_timesteps), jnp.int32)
    losses.append(float(_eval_loss(model, batch, key, timesteps, tables, config_json)))
    blind_losses.append(float(_eval_loss(model, blind, key, timesteps, tables, config_json)))
  return {"v_mse": float(np.mean(losses)), "v_mse_static_camera": float(np.mean(blind_losses))}


def camera_dit_task(config: ml_collections.ConfigDict) -> Task:
  """The shared loop's Task for the camera branches."""
  from wonderland_jax.data import pipeline  # noqa: PLC0415
  tables = make_tables(scheduler_config(config))
  held_out: dict = {}
  clip_captions = ClipCaptions(config) if config.text.get("captions") else None

  def evaluate(model: CameraDiTTrainee, config):
    if not held_out:
      clips = pipeline.eval_clips(config)
      held_out.update({key: np.stack([clip[key] for clip in clips]) for key in ("frames", "viewmats", "intrinsics")})
      if clip_captions is not None:
        scene_index = np.stack([clip["scene_index"] for clip in clips])
        held_out["text_embeds"] = clip_captions.held_out_embeds(config, scene_index)
    return evaluate_loss(model, held_out, config, tables), {}

  def export(model: CameraDiTTrainee, config, directory: Path):
    camera_dit.save_branch(directory, model.dit, overwrite=True, metadata={
      "trained_with": config.to_dict(), checkpoints.POSE_NORMALIZATION: pose_normalization(config)})
    if _pipeline_dir(config) is None or base_trainable(config):
      base = model.dit.base
      params = nnx.to_pure_dict(nnx.state(base, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
      checkpoints.save(directory.parent / "base_transformer", params, kind="cogvideox_transformer",
                       config=base.config.to_dict(), overwrite=True)
    if _pipeline_dir(config) is None:
      if not config.vae.get("checkpoint"):
        checkpoints.save(directory.parent / "vae", model.vae, kind="cogvideox_vae",
                         config=model.vae.config.to_dict(), overwrite=True)
    logger.info("camera-dit: wrote the camera branch to %s", directory)

  return Task(name="camera-dit", build_model=CameraDiTTrainee,
              loss_fn=functools.partial(camera_dit_loss, config=config, tables=tables),
              make_iterator=pipeline.make_train_iterator if clip_captions is None else clip_captions.train_iterator,
              trainable=_trainee_dit if base_trainable(config) else _trainee_branch, evaluate=evaluate,
              export=export, abstract_batch=abstract_batch)


def abstract_batch(config: ml_collections.ConfigDict) -> dict:
  """The global batch the step takes, as shapes: frames and their cameras, and with `text.captions` the clips'
  text embeddings (B, L, D) (L, D: `base.random_config`'s max_text_seq_length and text_embed_dim)."""
  batch, data = int(config.train.batch_size), config.data
  frames, height, width = int(data.num_frames), int(data.height), int(data.width)
  shape = lambda *dims: jax.ShapeDtypeStruct((batch, frames, *dims), jnp.float32)
  shapes = {"frames": shape(height, width, 3), "viewmats": shape(4, 4), "intrinsics": shape(3, 3)}
  if config.text.get("captions"):
    base = DiTConfig.from_diffusers(config.base.random_config.to_dict())
    shapes["text_embeds"] = jax.ShapeDtypeStruct((batch, base.max_text_seq_length, base.text_embed_dim), jnp.float32)
  return shapes


def planning_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with random base and VAE of the base pipeline's shapes (read from its model.json files when
  the pipeline is there, else `base.random_config` / `vae.random_config`, which the 5B config sets to the
  published CogVideoX-5B-I2V configs)."""
  planned = ml_collections.ConfigDict(config.to_dict())
  directory = _pipeline_dir(config)
  with planned.unlocked():
    planned.base.pipeline = ""
    planned.text.embeddings = ""
    if directory is not None and (directory / "transformer").is_dir():
      planned.base.random_config = checkpoints.read_description(directory / "transformer")[1]
    vae_dir = Path(config.vae.checkpoint) if config.vae.get("checkpoint") else (
        directory / "vae" if directory is not None else None)
    planned.vae.checkpoint = ""
    if vae_dir is not None and vae_dir.is_dir():
      planned.vae.random_config = checkpoints.read_description(vae_dir)[1]
  for name in ("base", "vae"):
    if not planned[name].random_config.to_dict():
      raise WonderlandError(f"plan: --config.{name}.random_config is empty and no checkpoint gives the shapes")
  return planned


def _trainee_branch(path, value) -> bool:
  """The trainable params of a `CameraDiTTrainee`: the branch params of its `dit`."""
  return len(path) > 1 and path[0] == "dit" and camera_dit.BRANCH(path[1:], value)


def _trainee_dit(path, value) -> bool:
  """The trainable params of a `CameraDiTTrainee` with `base.trainable`: every param of its `dit`."""
  return path[0] == "dit" and isinstance(value, nnx.Param)
