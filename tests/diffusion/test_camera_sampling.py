"""Camera-guided sampling (`sample_image_to_video(..., plucker=)`): with zero-initialised branches it is plain
sampling with the base; trained branches make the video depend on the cameras; the guided batch carries the
cameras in both halves; bad ray shapes name the expected one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers.dit import perturb
from wonderland_jax.camera import make_trajectory, plucker_rays
from wonderland_jax.diffusion import SchedulerConfig
from wonderland_jax.diffusion.sampling import sample_image_to_video
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.camera_dit import CameraConfig, CameraDiT
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig

# 3 latent frames of 6x8 (9 frames of 48x64 pixels), 4 latent channels, 1 block.
BASE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=12,
            text_embed_dim=20, num_layers=1, sample_width=8, sample_height=6, sample_frames=9, max_text_seq_length=7,
            use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
CAMERA = CameraConfig(controlnet_layers=1, lora_rank=2, encoder_channels=4)
SCHEDULERS = {kind: SchedulerConfig(kind=kind, prediction_type="v_prediction", timestep_spacing="trailing",
                                    rescale_betas_zero_snr=True, snr_shift_scale=1.0)
              for kind in ("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler")}


def _inputs(batch=1, seed=0):
  """image latents (B, 1, 6, 8, 4), prompt and negative embeddings (B, 7, 20)."""
  rng = np.random.default_rng(seed)
  image, prompt, negative = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                             for shape in ((batch, 1, 6, 8, 4), (batch, 7, 20), (batch, 7, 20)))
  return image, prompt, negative


def _rays(name, batch=1):
  """(B, 9, 48, 64, 6) Plücker rays of a trajectory preset."""
  rays = plucker_rays(make_trajectory(name, 9, width=64, height=48))
  return jnp.broadcast_to(rays, (batch,) + rays.shape)


def _sample(transformer, scheduler="CogVideoXDPMScheduler", guidance_scale=6.0, batch=1, **kwargs):
  image, prompt, negative = _inputs(batch)
  return np.asarray(sample_image_to_video(transformer, SCHEDULERS[scheduler], image, prompt, negative,
                                          num_latent_frames=3, num_inference_steps=2, guidance_scale=guidance_scale,
                                          key=jax.random.key(0), **kwargs))


@pytest.mark.parametrize("scheduler", ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"])
def test_zero_branches_sample_the_base_video_and_trained_ones_follow_the_cameras(scheduler):
  base = CogVideoXTransformer(DiTConfig.from_diffusers(BASE), rngs=nnx.Rngs(0))
  plain = _sample(base, scheduler)  # before the branch attaches adapters to the base's blocks
  model = CameraDiT(base, CAMERA, rngs=nnx.Rngs(1))
  orbit = _sample(model, scheduler, plucker=_rays("orbit"))
  assert orbit.shape == plain.shape == (1, 3, 6, 8, 4)
  # The same maths (zero-linears, B = 0, [I; 0]) compiled into another program: equal up to float32 rounding,
  # which guidance (x6) amplifies; ~1e-6 of the largest value.
  np.testing.assert_allclose(orbit, plain, rtol=0, atol=5e-6 * np.abs(plain).max())
  perturb(model)
  orbit = _sample(model, scheduler, plucker=_rays("orbit"))
  dolly = _sample(model, scheduler, plucker=_rays("dolly"))
  assert np.all(np.isfinite(orbit)) and np.abs(orbit - plain).max() > 1e-3
  assert np.abs(orbit - dolly).max() > 1e-4


class _CameraEcho(nnx.Module):
  """A transformer stub whose prediction is each batch element's mean camera ray, whatever the text: guidance
  then changes nothing iff the unconditional half got the same cameras as the conditional one."""

  def __init__(self, config: DiTConfig):
    self.dit_config = config

  @property
  def config(self) -> DiTConfig:
    return self.dit_config

  def __call__(self, latents, text_embeddings, timestep, plucker, ofs=None):
    assert plucker.shape[0] == latents.shape[0] == text_embeddings.shape[0]
    batch, frames, height, width, _ = latents.shape
    mean = jnp.mean(plucker, axis=(1, 2, 3, 4))[:, None, None, None, None]
    return jnp.broadcast_to(mean, (batch, frames, height, width, self.config.out_channels))


def test_the_guided_batch_has_the_cameras_in_both_halves():
  stub = _CameraEcho(DiTConfig.from_diffusers(BASE))
  # Two batch elements with different cameras: the halves must be [cameras; cameras], in order.
  rays = jnp.concatenate([_rays("orbit"), _rays("pan-left")], 0)
  unguided = _sample(stub, guidance_scale=1.0, batch=2, plucker=rays)
  guided = _sample(stub, guidance_scale=6.0, batch=2, plucker=rays)
  assert guided.shape == (2, 3, 6, 8, 4)
  np.testing.assert_allclose(guided, unguided, rtol=1e-5, atol=1e-6)
  assert np.abs(guided[0] - guided[1]).max() > 1e-4


def test_bad_plucker_shapes_name_the_expected_one():
  model = CameraDiT(CogVideoXTransformer(DiTConfig.from_diffusers(BASE), rngs=nnx.Rngs(0)), CAMERA,
                    rngs=nnx.Rngs(1))
  with pytest.raises(WonderlandError, match=r"plucker rays must be \(1, 9, 48, 64, 6\) for latents"):
    _sample(model, plucker=_rays("orbit")[:, :5])
  with pytest.raises(WonderlandError, match=r"plucker rays must be \(1, 9, 48, 64, 6\)"):
    _sample(model, plucker=_rays("orbit", batch=2))
  stub = _CameraEcho(DiTConfig.from_diffusers(BASE))
  with pytest.raises(WonderlandError, match=r"plucker rays must be \(B=1, F, H, W, 6\).*got \(9, 48, 64, 6\)"):
    _sample(stub, plucker=_rays("orbit")[0])
