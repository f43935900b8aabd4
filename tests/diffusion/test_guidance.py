"""Classifier-free guidance: the math, the doubled batch, dynamic CFG against the pipeline's own per-step
scale, and a whole I2V sampling loop built from our pieces against `CogVideoXImageToVideoPipeline` (tiny
random transformer and VAE, both schedulers)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (
  AutoencoderKLCogVideoX,
  CogVideoXDDIMScheduler,
  CogVideoXDPMScheduler,
  CogVideoXImageToVideoPipeline,
  CogVideoXTransformer3DModel,
)

from tests.helpers.schedulers import SHIPPED
from wonderland_jax.diffusion import guidance as G
from wonderland_jax.diffusion import schedulers as S
from wonderland_jax.errors import WonderlandError


def test_guided_math():
  uncond = jnp.array([1.0, -2.0, 0.5])
  text = jnp.array([3.0, -1.0, 0.5])
  np.testing.assert_allclose(G.guided(uncond, text, 1.0), text)
  np.testing.assert_allclose(G.guided(uncond, text, 0.0), uncond)
  np.testing.assert_allclose(G.guided(uncond, text, 6.0), [13.0, 4.0, 0.5])
  np.testing.assert_allclose(jax.jit(G.guided)(uncond, text, jnp.float32(2.5)), [6.0, 0.5, 0.5])


def test_dynamic_scale_direct_formula():
  """Against a separate vectorised numpy transcription of 1 + g (1 - cos(pi ((n - t) / n) ** 5)) / 2."""
  for n in (6, 50):
    ts = S.timesteps(S.SchedulerConfig.from_diffusers(SHIPPED), n)
    x = (n - ts.astype(np.float64)) / n
    expected = 1 + 6.0 * (1 - np.cos(np.pi * np.power(x, 5.0))) / 2
    np.testing.assert_allclose(G.guidance_scales(6.0, ts, use_dynamic_cfg=True), expected, rtol=1e-9)
    assert all(1.0 <= s <= 7.0 for s in G.guidance_scales(6.0, ts, use_dynamic_cfg=True))
  assert G.dynamic_guidance_scale(6.0, 50, 50) == 1.0  # t == n: cos(0)
  assert G.dynamic_guidance_scale(4.0, 0, 50) == pytest.approx(1 + 4.0 * (1 - math.cos(math.pi)) / 2)
  np.testing.assert_array_equal(G.guidance_scales(6.0, [999, 500]), [6.0, 6.0])
  with pytest.raises(WonderlandError, match="guidance_scale"):
    G.guidance_scales(-1.0, [999])
  with pytest.raises(TypeError, match="timestep"):
    jax.jit(lambda t: G.dynamic_guidance_scale(6.0, t, 50))(jnp.int32(999))


def test_classifier_free_guidance_batching():
  """The doubled batch is [uncond; cond] with the image latents appended on the channel axis."""
  latents = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)        # (B, F, C) channels-last
  image = -jnp.ones((2, 3, 2))
  cond, uncond = {"text": jnp.full((2, 5), 1.0)}, {"text": jnp.full((2, 5), -1.0)}
  seen = {}

  def model_fn(x, context):
    seen["x"], seen["context"] = x, context
    # "prediction": channel 0 of the latents + the context's mean, so halves differ by their context
    return x[..., :4] + context["text"].mean(-1)[:, None, None]

  out = G.classifier_free_guidance(model_fn, latents, cond, uncond, 3.0, image_latents=image)
  assert seen["x"].shape == (4, 3, 6)
  np.testing.assert_array_equal(seen["x"][:2, :, :4], latents)
  np.testing.assert_array_equal(seen["x"][2:, :, :4], latents)
  np.testing.assert_array_equal(seen["x"][..., 4:], -1.0)
  np.testing.assert_array_equal(seen["context"]["text"][:2], -1.0)  # uncond first
  np.testing.assert_array_equal(seen["context"]["text"][2:], 1.0)
  np.testing.assert_allclose(out, G.guided(latents - 1.0, latents + 1.0, 3.0))
  assert out.dtype == jnp.float32

  # base scale <= 1: the pipeline does no guidance, one pass on the conditional batch
  out = G.classifier_free_guidance(model_fn, latents, cond, uncond, 1.0, image_latents=image)
  assert seen["x"].shape == (2, 3, 6)
  np.testing.assert_allclose(out, latents + 1.0)

  # dynamic: the formula's scale at that timestep
  out = G.classifier_free_guidance(model_fn, latents, cond, uncond, 6.0, dynamic=True, timestep=832,
                                   num_inference_steps=6)
  np.testing.assert_allclose(out, G.guided(latents - 1.0, latents + 1.0, G.dynamic_guidance_scale(6.0, 832, 6)),
                             rtol=1e-6)

  # a traced per-step scale under jit
  jitted = jax.jit(lambda s: G.classifier_free_guidance(model_fn, latents, cond, uncond, s))
  np.testing.assert_allclose(jitted(jnp.float32(3.0)), G.guided(latents - 1.0, latents + 1.0, 3.0))


# ----------------------------------------------------------------------------------------------- the pipeline

HEIGHT = WIDTH = 16      # pixels; the tiny VAE has 2x spatial, 4x temporal compression
NUM_FRAMES = 9           # -> 3 latent frames
CHANNELS = 4             # latent channels (transformer in_channels = 2 * 4: noisy + image latents)
TEXT = (7, 16)           # text tokens, text embedding width


def _tiny_pipeline(kind: str) -> CogVideoXImageToVideoPipeline:
  torch.manual_seed(0)
  transformer = CogVideoXTransformer3DModel(
      num_attention_heads=2, attention_head_dim=16, in_channels=2 * CHANNELS, out_channels=CHANNELS,
      time_embed_dim=8, text_embed_dim=TEXT[1], num_layers=1, sample_width=WIDTH // 2, sample_height=HEIGHT // 2,
      sample_frames=NUM_FRAMES, patch_size=2, max_text_seq_length=TEXT[0],
      use_rotary_positional_embeddings=True).eval()
  vae = AutoencoderKLCogVideoX(
      block_out_channels=(8, 8), latent_channels=CHANNELS, layers_per_block=1, norm_num_groups=2,
      down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
      sample_height=HEIGHT, sample_width=WIDTH).eval()
  scheduler = {"CogVideoXDDIMScheduler": CogVideoXDDIMScheduler,
               "CogVideoXDPMScheduler": CogVideoXDPMScheduler}[kind].from_config(SHIPPED)
  pipe = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                       scheduler=scheduler)
  pipe.set_progress_bar_config(disable=True)
  return pipe


@pytest.mark.parametrize("kind", ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"])
def test_i2v_sampling_loop_matches_pipeline(kind):
  """Our loop (image latents, guidance_scales, classifier_free_guidance, step) on diffusers' layout
  (B, F, C, h, w), replaying the pipeline's generator stream, reproduces every step's latents and scale."""
  steps, guidance_scale = 6, 6.0
  pipe = _tiny_pipeline(kind)
  rng = torch.Generator().manual_seed(1)
  image = torch.rand(1, 3, HEIGHT, WIDTH, generator=rng)
  prompt_embeds, negative_embeds = torch.randn(1, *TEXT, generator=rng), torch.randn(1, *TEXT, generator=rng)
  latent_shape = (1, 1 + (NUM_FRAMES - 1) // 4, CHANNELS, HEIGHT // 2, WIDTH // 2)
  initial = torch.randn(latent_shape, generator=rng)

  recorded = []

  def callback(p, i, t, tensors):
    recorded.append((int(t), p.guidance_scale, tensors["latents"].numpy().copy()))
    return {}

  pipe(image=image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, height=HEIGHT,
       width=WIDTH, num_frames=NUM_FRAMES, num_inference_steps=steps, guidance_scale=guidance_scale,
       use_dynamic_cfg=True, generator=torch.Generator().manual_seed(0), latents=initial.clone(),
       output_type="latent", callback_on_step_end=callback, max_sequence_length=TEXT[0])

  # The image path: preprocess to [-1, 1], encode, *sample* the posterior with the pipeline's generator (its
  # first draw), scale by the VAE scaling factor, then zero latent frames after the first.
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    pixels = pipe.video_processor.preprocess(image, height=HEIGHT, width=WIDTH)
    first = pipe.vae.encode(pixels.unsqueeze(2)).latent_dist.sample(generator)        # (B, C, 1, h, w)
  first = first.permute(0, 2, 1, 3, 4).numpy() * pipe.vae.config.scaling_factor     # (B, 1, C, h, w)
  image_latents = jnp.concatenate([first, np.zeros((1, latent_shape[1] - 1) + latent_shape[2:], np.float32)], 1)

  config = S.SchedulerConfig.from_diffusers(dict(SHIPPED, _class_name=kind))
  tables = S.make_tables(config)
  ts = S.timesteps(config, steps)
  scales = G.guidance_scales(guidance_scale, ts, use_dynamic_cfg=True)
  rotary = pipe._prepare_rotary_positional_embeddings(HEIGHT, WIDTH, latent_shape[1], "cpu")

  def model_at(t):
    def model_fn(x, context):
      with torch.no_grad():
        out = pipe.transformer(hidden_states=torch.from_numpy(np.array(x)),
                               encoder_hidden_states=torch.from_numpy(np.array(context)),
                               timestep=torch.full((x.shape[0],), int(t), dtype=torch.int64),
                               image_rotary_emb=rotary, return_dict=False)[0]
      return jnp.asarray(out.numpy())
    return model_fn

  latents = jnp.asarray(initial.numpy())
  state = S.init_state(latents)
  cond, uncond = jnp.asarray(prompt_embeds.numpy()), jnp.asarray(negative_embeds.numpy())
  assert [r[0] for r in recorded] == list(ts)
  for i, t in enumerate(ts):
    assert scales[i] == recorded[i][1]
    noise_pred = G.classifier_free_guidance(model_at(t), latents, cond, uncond, scales[i],
                                            image_latents=image_latents, channel_axis=2)
    noise = None
    if kind == "CogVideoXDPMScheduler":  # one draw on a first-order step, two (the second used) otherwise
      second_order = i > 0 and t - config.num_train_timesteps // steps >= 0
      noise = [torch.randn(latent_shape, generator=generator) for _ in range(2 if second_order else 1)][-1]
      noise = noise.numpy()
    latents, state = S.step(tables, state, noise_pred, int(t), latents, num_inference_steps=steps, noise=noise)
    reference = recorded[i][2]
    err = np.abs(np.asarray(latents) - reference).max() / np.abs(reference).max()
    assert err <= 1e-5, (i, err)
