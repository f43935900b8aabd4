"""Camera-guided image-to-video: a converted CogVideoX pipeline plus a trained camera branch (Sec. 3.1).

    pipe = CameraVideoPipeline.load("checkpoints/cogvideox-5b-i2v", "runs/camera_dit/model")
    cameras = make_trajectory("orbit", 49, width=720, height=480)
    latents, frames = pipe.generate(image, "a castle at dusk", cameras, key=jax.random.key(0))

The cameras (one per video frame, any world frame and units, OpenCV) are conditioned on as the camera branch
saw them in training: `camera.conditioning_rays`, the function the training step calls (re-based on the first
camera, scale-normalised with the mode, target and floor of the branch's training data,
`checkpoints.pose_normalization`,
default: the farthest camera at distance 1 from the first; Plücker rays at the video resolution, intrinsics
scaled to it).
CogVideoX 1.5 samples `padded_latent_frames` extra latent frames in front (dropped at the end); their rays are
the first camera's. `latents` and `frames` are `VideoPipeline.generate`'s.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from wonderland_jax import checkpoints
from wonderland_jax.camera.camera import Camera
from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR, conditioning_rays
from wonderland_jax.diffusion.pipeline import VideoPipeline
from wonderland_jax.diffusion.sampling import padded_latent_frames
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models import camera_dit
from wonderland_jax.parallel.compute import Compute


def _check_batch(cameras: Camera) -> None:
  if len(cameras.batch_shape) != 1:
    raise WonderlandError(f"expected a 1-D batch of cameras (F,), got batch shape {cameras.batch_shape}")


@dataclasses.dataclass
class CameraVideoPipeline:
  """A `VideoPipeline` whose transformer is a `CameraDiT`, and the pose normalisation its branch trained with."""

  pipeline: VideoPipeline
  scale_mode: str = "max_distance"
  scale_target: float = 1.0
  scale_floor: float = DEFAULT_SCALE_FLOOR

  @classmethod
  def load(cls, directory: str | os.PathLike, branch: str | os.PathLike, *, merge_lora: bool = False,
           compute: Compute | None = None) -> CameraVideoPipeline:
    """The converted pipeline in `directory` (`wonderland convert cogvideox`) with the camera branch checkpoint
    `branch` (`camera_dit.save_branch`, `wonderland train camera-dit`: `<workdir>/model`) on its transformer.
    `merge_lora` folds the branch's adapters into the base kernels (faster, same output up to rounding).
    `compute`: dtype, attention and mesh (`VideoPipeline.load`); the branch is built and cast like the base."""
    pipeline = VideoPipeline.load(directory, compute=compute)
    with pipeline.compute.loading():
      transformer = pipeline.compute.cast(camera_dit.load(pipeline.transformer, branch, merge=merge_lora))
    vae_factor = pipeline.vae.config.spatial_compression
    if transformer.camera.spatial_compression != vae_factor:
      raise InputFileError(f"{branch}: the camera branch reads rays at {transformer.camera.spatial_compression}x "
                           f"the latent size, but the VAE of {directory} compresses {vae_factor}x")
    scale_mode, scale_target, scale_floor = checkpoints.pose_normalization(branch)
    return cls(dataclasses.replace(pipeline, transformer=transformer), scale_mode, scale_target, scale_floor)

  @property
  def default_size(self) -> tuple[int, int]:
    """(height, width) in pixels the transformer was trained at."""
    return self.pipeline.default_size

  def plucker(self, cameras: Camera, height: int, width: int) -> jax.Array:
    """The transformer's camera condition for a video of len(cameras) frames at (height, width): (1, F', height,
    width, 6) with F' = F + 4 x the CogVideoX 1.5 padding frames (rays of camera 0) in front."""
    num_frames = len(cameras)
    num_latent_frames = self.pipeline.check(num_frames, height, width)
    additional = padded_latent_frames(num_latent_frames, self.pipeline.transformer.config.patch_size_t)[1]
    rays = conditioning_rays(cameras, height, width, scale_mode=self.scale_mode, scale_target=self.scale_target,
                             scale_floor=self.scale_floor)
    temporal = int(self.pipeline.transformer.config.temporal_compression_ratio)
    rays = jnp.concatenate([jnp.repeat(rays[:1], temporal * additional, axis=0), rays], axis=0)
    return rays[None]

  def generate(self, image: np.ndarray, prompt: str, cameras: Camera, *, negative_prompt: str = "",
               num_frames: int | None = None, num_inference_steps: int = 50, guidance_scale: float = 6.0,
               use_dynamic_cfg: bool = False, key: jax.Array,
               decode: bool = True) -> tuple[jax.Array, np.ndarray | None]:
    """image (H, W, 3) in [0, 1] at the video size, one camera per frame -> (latents, frames in [0, 1]), as
    `VideoPipeline.generate` (decode=False: frames None). num_frames (default len(cameras)) must equal the
    number of cameras."""
    _check_batch(cameras)
    num_frames = len(cameras) if num_frames is None else num_frames
    if num_frames != len(cameras):
      raise WonderlandError(f"--frames {num_frames} but the trajectory has {len(cameras)} cameras; camera control "
                            "needs one camera per video frame")
    height, width = image.shape[:2]
    return self.pipeline.generate(image, prompt, negative_prompt=negative_prompt, num_frames=num_frames,
                                  num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                  use_dynamic_cfg=use_dynamic_cfg, key=key,
                                  plucker=self.plucker(cameras, height, width), decode=decode)
