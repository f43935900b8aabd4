"""Image-to-video sampling against diffusers' CogVideoXImageToVideoPipeline (latents out) with tiny random
components: the same image, prompt embeddings, initial noise and DPM noise give the same latents."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler,
                       CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel)
from diffusers.schedulers import scheduling_dpm_cogvideox

from wonderland_jax import checkpoints
from wonderland_jax.convert import convert
from wonderland_jax.diffusion import SchedulerConfig
from wonderland_jax.diffusion.sampling import encode_image, sample_image_to_video
from wonderland_jax.errors import WonderlandError

SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                 num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                 set_alpha_to_one=True, snr_shift_scale=1.0, steps_offset=0, timestep_spacing="trailing")
VAE = dict(block_out_channels=(8, 16), latent_channels=4, layers_per_block=1, norm_num_groups=2,
           down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
           scaling_factor=0.7)
TRANSFORMER = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=12,
                   text_embed_dim=20, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
                   max_text_seq_length=7, use_rotary_positional_embeddings=True,
                   use_learned_positional_embeddings=True)


@pytest.fixture(scope="module")
def components(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  torch.manual_seed(0)
  vae = AutoencoderKLCogVideoX(**VAE).eval()
  transformer = CogVideoXTransformer3DModel(**TRANSFORMER).eval()
  with torch.no_grad():
    for param in transformer.parameters():  # diffusers zero-inits little, but make every weight matter
      param.add_(0.02 * torch.randn_like(param))
  vae.save_pretrained(root / "vae")
  transformer.save_pretrained(root / "transformer")
  convert("vae", root, root / "ours_vae")
  convert("transformer", root, root / "ours_transformer")
  return vae, transformer, checkpoints.load(root / "ours_vae"), checkpoints.load(root / "ours_transformer")


@pytest.mark.parametrize("scheduler_class", [CogVideoXDDIMScheduler, CogVideoXDPMScheduler])
@pytest.mark.parametrize("guidance_scale,dynamic", [(1.0, False), (6.0, False), (6.0, True)])
def test_three_steps_match_the_diffusers_pipeline(components, monkeypatch, scheduler_class, guidance_scale,
                                                  dynamic):
  vae, transformer, our_vae, our_transformer = components
  scheduler = scheduler_class(**SCHEDULER)
  pipeline = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                           scheduler=scheduler)
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
  prompt, negative = (rng.normal(size=(1, 7, 20)).astype(np.float32) for _ in range(2))
  initial = rng.normal(size=(1, 3, 4, 8, 8)).astype(np.float32)  # (B, F, C, h, w) as diffusers wants it
  # Record the DPM scheduler's noise draws (the last draw of each step is the one it uses).
  draws, step_of_draw = [], []
  original_randn = scheduling_dpm_cogvideox.randn_tensor

  def recording_randn(*args, **kwargs):
    out = original_randn(*args, **kwargs)
    draws.append(out.numpy().copy())
    step_of_draw.append(len(step_calls))
    return out

  step_calls = []
  original_step = scheduler.step

  def counting_step(*args, **kwargs):
    result = original_step(*args, **kwargs)
    step_calls.append(1)
    return result

  monkeypatch.setattr(scheduling_dpm_cogvideox, "randn_tensor", recording_randn)
  monkeypatch.setattr(scheduler, "step", counting_step)
  with torch.no_grad():
    expected = pipeline(image=torch.from_numpy(image), prompt_embeds=torch.from_numpy(prompt),
                        negative_prompt_embeds=torch.from_numpy(negative), height=16, width=16, num_frames=9,
                        num_inference_steps=3, guidance_scale=guidance_scale, use_dynamic_cfg=dynamic,
                        generator=torch.Generator().manual_seed(0), latents=torch.from_numpy(initial),
                        output_type="latent", return_dict=False)[0].numpy()
  used_noise = {index: draws[i] for i, index in enumerate(step_of_draw)}  # later draws of a step win

  # The pipeline's first generator draw is the image posterior's sample noise.
  image_noise = torch.randn((1, 4, 1, 8, 8), generator=torch.Generator().manual_seed(0)).numpy()
  image_latents = encode_image(our_vae, jnp.asarray(np.moveaxis(image * 2 - 1, 1, -1)),
                               jnp.asarray(np.moveaxis(image_noise, 1, -1)))
  ours = sample_image_to_video(
      our_transformer, SchedulerConfig.from_diffusers(dict(scheduler.config, _class_name=scheduler_class.__name__)),
      image_latents, jnp.asarray(prompt),
      jnp.asarray(negative), num_latent_frames=3, num_inference_steps=3, guidance_scale=guidance_scale,
      use_dynamic_cfg=dynamic, key=jax.random.key(0), latents=jnp.asarray(np.moveaxis(initial, 2, -1)),
      step_noise=lambda index: jnp.asarray(np.moveaxis(used_noise[index], 2, -1)))
  ours = np.moveaxis(np.asarray(ours), -1, 2)
  error = np.abs(ours - expected).max() / np.abs(expected).max()
  assert error <= 1e-4, f"max error {error:.2e}"


def test_shapes_are_validated(components):
  _, _, _, our_transformer = components
  config = SchedulerConfig.from_diffusers(dict(SCHEDULER, _class_name="CogVideoXDDIMScheduler"))
  prompt = jnp.zeros((1, 7, 20))
  with pytest.raises(WonderlandError, match="only generates at 8x8 latents"):
    sample_image_to_video(our_transformer, config, jnp.zeros((1, 1, 6, 8, 4)), prompt, key=jax.random.key(0),
                          num_latent_frames=3, num_inference_steps=2)
  with pytest.raises(WonderlandError, match="2 x latent channels"):
    sample_image_to_video(our_transformer, config, jnp.zeros((1, 1, 8, 8, 3)), prompt, key=jax.random.key(0),
                          num_latent_frames=3, num_inference_steps=2)
