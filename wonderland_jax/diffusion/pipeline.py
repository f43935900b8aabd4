"""Image-to-video generation with a converted CogVideoX pipeline (`wonderland convert cogvideox`).

    pipe = VideoPipeline.load("checkpoints/cogvideox-5b-i2v")
    latents, frames = pipe.generate(image, "a castle at dusk", num_frames=49, key=jax.random.key(0))

`latents` are the denoised video latents (B=1, 1 + (F - 1) / 4, H / 8, W / 8, 16), unscaled as the VAE
wants them for decoding; `frames` (F, H, W, 3) in [0, 1].

`load(..., compute=Compute.create(dtype=, attention=, mesh=))` (`parallel.compute`; default: bfloat16 on
accelerators, float32 on CPU, attention 'auto', one device) rebuilds the components with that dtype and
attention, casts their params to it, loads them onto the mesh, and `generate` runs every stage under it (the
guided batch over 'data', the video tokens over 'context'); the VAE tiles on accelerators.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.convert.pipeline import read_pipeline
from wonderland_jax.diffusion.sampling import encode_image, sample_image_to_video
from wonderland_jax.diffusion.schedulers import SchedulerConfig
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models.t5 import encode_prompt
from wonderland_jax.models.t5_tokenizer import T5Tokenizer
from wonderland_jax.parallel.compute import Compute


@dataclasses.dataclass
class VideoPipeline:
  transformer: nnx.Module
  vae: nnx.Module
  text_encoder: nnx.Module
  tokenizer: T5Tokenizer
  scheduler: SchedulerConfig
  compute: Compute = dataclasses.field(default_factory=Compute)

  @classmethod
  def load(cls, directory: str | os.PathLike, *, compute: Compute | None = None) -> VideoPipeline:
    """The converted pipeline in `directory` (or a diffusers pipeline folder, converted in memory), built and
    placed as `compute` says (default `Compute.create()`)."""
    directory = Path(directory)
    compute = Compute.create() if compute is None else compute
    diffusers = is_diffusers_pipeline(directory)
    needed = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    if diffusers:  # converted in memory below (`convert.load_converted`: nothing written)
      missing = [name + "/" for name in needed if not (directory / name).is_dir()]
      if missing:
        raise InputFileError(f"{directory}: a diffusers pipeline without {', '.join(missing)}")
      if compute.mesh is not None:
        raise WonderlandError(f"{directory}: --mesh needs a converted pipeline (`wonderland convert cogvideox`), "
                              "whose params load straight onto the mesh")
    else:
      components = read_pipeline(directory)["components"]
      missing = [name for name in needed if name not in components]
      if missing:
        raise InputFileError(f"{directory}: the converted pipeline lacks {', '.join(missing)}; convert it with "
                             "`wonderland convert cogvideox` and all components")
    scheduler_json = directory / "scheduler" / "scheduler_config.json"
    try:
      scheduler = SchedulerConfig.from_diffusers(json.loads(scheduler_json.read_text()))
    except FileNotFoundError:
      raise InputFileError(f"{scheduler_json}: not found") from None
    tokenizer = T5Tokenizer.from_folder(directory / "tokenizer")
    overrides = compute.overrides()
    kinds = (("transformer", "cogvideox_transformer"), ("vae", "cogvideox_vae"), ("text_encoder", "t5_encoder"))
    if diffusers:
      from wonderland_jax.convert import DTYPES, load_converted  # noqa: PLC0415 (the converters, only for this)
      dtype = compute.dtype if compute.dtype in DTYPES else "float32"  # float16: converted in fp32, then cast
      models = [load_converted(name, directory, dtype=dtype, overrides=overrides) for name, _ in kinds]
    else:
      with compute.loading():
        models = [checkpoints.load(directory / name, kind=kind, overrides=overrides) for name, kind in kinds]
    transformer, vae, text_encoder = (compute.cast(model) for model in models)
    return cls(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
               scheduler=scheduler, compute=compute)

  @property
  def default_size(self) -> tuple[int, int]:
    """(height, width) in pixels the transformer was trained at."""
    factor = self.vae.config.spatial_compression
    return self.transformer.config.sample_height * factor, self.transformer.config.sample_width * factor

  def check(self, num_frames: int, height: int, width: int) -> int:
    """Validates the video size; returns the number of latent frames."""
    temporal = int(self.vae.config.temporal_compression_ratio)
    if num_frames < 1 or (num_frames - 1) % temporal:
      raise WonderlandError(f"--frames {num_frames}: must be 1 + {temporal}k (e.g. 49 -> 13 latent frames)")
    multiple = self.vae.config.spatial_compression * self.transformer.config.patch_size
    if height % multiple or width % multiple:
      raise WonderlandError(f"--size {width}x{height}: width and height must be multiples of {multiple}")
    return (num_frames - 1) // temporal + 1

  def generate(self, image: np.ndarray, prompt: str, *, negative_prompt: str = "", num_frames: int = 49,
               num_inference_steps: int = 50, guidance_scale: float = 6.0, use_dynamic_cfg: bool = False,
               key: jax.Array, plucker: jax.Array | None = None,
               decode: bool = True) -> tuple[jax.Array, np.ndarray | None]:
    """image (H, W, 3) in [0, 1] at the video size -> (latents, frames in [0, 1]). plucker: the camera
    condition of a camera-guided transformer (see `sample_image_to_video`; `CameraVideoPipeline` makes it).
    decode=False skips the VAE decoder (frames None; `decode_frames` decodes the latents later)."""
    with self.compute.running():
      return self._generate(image, prompt, negative_prompt, num_frames, num_inference_steps, guidance_scale,
                            use_dynamic_cfg, key, plucker, decode)

  def _generate(self, image, prompt, negative_prompt, num_frames, num_inference_steps, guidance_scale,
                use_dynamic_cfg, key, plucker, decode):
    height, width = image.shape[:2]
    num_latent_frames = self.check(num_frames, height, width)
    max_length = self.transformer.config.max_text_seq_length
    prompt_embeds = encode_prompt(self.tokenizer, self.text_encoder, [prompt], max_length)
    negative_embeds = encode_prompt(self.tokenizer, self.text_encoder, [negative_prompt], max_length)
    image_key, sample_key = jax.random.split(key)
    factor = self.vae.config.spatial_compression
    noise_shape = (1, 1, height // factor, width // factor, self.vae.config.latent_channels)
    image_latents = encode_image(self.vae, jnp.asarray(image, jnp.float32)[None] * 2 - 1,
                                 jax.random.normal(image_key, noise_shape),
                                 tiled=self.compute.tile_vae(height, width))
    latents = sample_image_to_video(self.transformer, self.scheduler, image_latents, prompt_embeds, negative_embeds,
                                    num_latent_frames=num_latent_frames, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, use_dynamic_cfg=use_dynamic_cfg, key=sample_key,
                                    plucker=plucker)
    unscaled = self.vae.config.unscale_latents(latents)
    return unscaled, self.decode_frames(unscaled) if decode else None

  def decode_frames(self, latents: jax.Array) -> np.ndarray:
    """Unscaled latents (1, t, h, w, C) -> frames (1 + 4 (t - 1), H, W, 3) in [0, 1] (float32)."""
    with self.compute.running():
      factor = self.vae.config.spatial_compression
      tiled = self.compute.tile_vae(latents.shape[2] * factor, latents.shape[3] * factor)
      frames = _decode(self.vae, latents, tiled=tiled)[0]
    return np.clip((np.asarray(frames, np.float32) + 1) / 2, 0, 1)


@nnx.jit(static_argnames="tiled")
def _decode(vae, latents, tiled=False):
  return vae.decode(latents, tiled=tiled)


def is_diffusers_pipeline(directory: str | os.PathLike) -> bool:
  """Whether `directory` is a diffusers pipeline folder (model_index.json, or transformer/, vae/, text_encoder/
  with their config.json) rather than a converted one (wonderland_pipeline.json)."""
  directory = Path(directory)
  if (directory / "wonderland_pipeline.json").is_file():
    return False
  return (directory / "model_index.json").is_file() or all(
      (directory / name / "config.json").is_file() for name in ("transformer", "vae", "text_encoder"))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """(h, w, 3) -> (height, width, 3), bilinear with antialiasing (a no-op at the same size)."""
  if image.shape[:2] == (height, width):
    return image
  return np.asarray(jax.image.resize(jnp.asarray(image), (height, width, 3), "bilinear", antialias=True))
