"""Image-to-video sampling against diffusers' CogVideoXImageToVideoPipeline (latents out) with tiny random
components: the same image, prompt embeddings (or prompts through a tiny T5 tokenizer and encoder), initial
noise and DPM noise give the same latents, for CogVideoX 1.0 and 1.5 (padded frames, ofs) I2V transformers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from diffusers import (
  AutoencoderKLCogVideoX,
  CogVideoXDDIMScheduler,
  CogVideoXDPMScheduler,
  CogVideoXImageToVideoPipeline,
  CogVideoXTransformer3DModel,
)
from diffusers.schedulers import scheduling_dpm_cogvideox

from tests.helpers.reference_models import make_t5_tokenizer, randomize_norms
from wonderland_jax import checkpoints
from wonderland_jax.convert import convert
from wonderland_jax.diffusion import SchedulerConfig
from wonderland_jax.diffusion.sampling import encode_image, padded_latent_frames, sample_image_to_video
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.t5 import encode_prompt
from wonderland_jax.models.t5_tokenizer import T5Tokenizer

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
# CogVideoX 1.5 I2V: (2, 2, 2) patches (3 latent frames are padded to 4), the ofs embedding, no positional
# embedding but 'slice' rotary grids.
TRANSFORMER_15 = dict(TRANSFORMER, use_learned_positional_embeddings=False, patch_size_t=2, patch_bias=False,
                      ofs_embed_dim=12)
TEXT_ENCODER = dict(vocab_size=160, d_model=20, d_kv=8, d_ff=24, num_layers=1, num_heads=2,
                    feed_forward_proj="gated-gelu")
CORPUS = "a castle at dusk\na small red boat on a lake\nthe camera flies over green hills\nsnow on the mountains\n"


def _random_transformer(config):
  transformer = CogVideoXTransformer3DModel(**config).eval()
  with torch.no_grad():
    for param in transformer.parameters():  # diffusers zero-inits little, but make every weight matter
      param.add_(0.02 * torch.randn_like(param))
  return transformer


@pytest.fixture(scope="module")
def components(tmp_path_factory):
  """{"vae": (diffusers, ours), "1.0": (diffusers, ours) transformers, "1.5": likewise}."""
  root = tmp_path_factory.mktemp("pipeline")
  torch.manual_seed(0)
  vae = AutoencoderKLCogVideoX(**VAE).eval()
  transformer = _random_transformer(TRANSFORMER)
  transformer_15 = _random_transformer(TRANSFORMER_15)
  vae.save_pretrained(root / "vae")
  transformer.save_pretrained(root / "transformer")
  transformer_15.save_pretrained(root / "v15" / "transformer")
  convert("vae", root, root / "ours_vae")
  convert("transformer", root, root / "ours_transformer")
  convert("transformer", root / "v15", root / "ours_transformer_15")
  return {"vae": (vae, checkpoints.load(root / "ours_vae")),
          "1.0": (transformer, checkpoints.load(root / "ours_transformer")),
          "1.5": (transformer_15, checkpoints.load(root / "ours_transformer_15"))}


def _run_diffusers(pipeline, monkeypatch, **kwargs):
  """The pipeline's latents (output_type="latent", all frames it sampled; (B, F, C, h, w)) for a 16x16 image
  and 9 frames, and the DPM scheduler's noise of each step (the last draw of a step is the one it uses)."""
  draws, step_of_draw, step_calls = [], [], []
  original_randn = scheduling_dpm_cogvideox.randn_tensor

  def recording_randn(*args, **randn_kwargs):
    out = original_randn(*args, **randn_kwargs)
    draws.append(out.numpy().copy())
    step_of_draw.append(len(step_calls))
    return out

  original_step = pipeline.scheduler.step

  def counting_step(*args, **step_kwargs):
    result = original_step(*args, **step_kwargs)
    step_calls.append(1)
    return result

  monkeypatch.setattr(scheduling_dpm_cogvideox, "randn_tensor", recording_randn)
  monkeypatch.setattr(pipeline.scheduler, "step", counting_step)
  with torch.no_grad():
    expected = pipeline(height=16, width=16, num_frames=9, num_inference_steps=3,
                        generator=torch.Generator().manual_seed(0), output_type="latent", return_dict=False,
                        **kwargs)[0].numpy()
  return expected, {index: draws[i] for i, index in enumerate(step_of_draw)}  # later draws of a step win


def _image_latents(our_vae, image):
  """Our image latents with the pipeline's posterior noise (the generator's first draw)."""
  image_noise = torch.randn((1, 4, 1, 8, 8), generator=torch.Generator().manual_seed(0)).numpy()
  return encode_image(our_vae, jnp.asarray(np.moveaxis(image * 2 - 1, 1, -1)),
                      jnp.asarray(np.moveaxis(image_noise, 1, -1)))


def _scheduler_config(scheduler):
  return SchedulerConfig.from_diffusers(dict(scheduler.config, _class_name=type(scheduler).__name__))


def _assert_close(ours, expected):
  ours = np.moveaxis(np.asarray(ours), -1, 2)
  assert ours.shape == expected.shape
  error = np.abs(ours - expected).max() / np.abs(expected).max()
  assert error <= 1e-4, f"max error {error:.2e}"


@pytest.mark.parametrize("version,scheduler_class,guidance_scale,dynamic", [
    ("1.0", CogVideoXDDIMScheduler, 1.0, False),
    ("1.0", CogVideoXDDIMScheduler, 6.0, False),
    ("1.0", CogVideoXDDIMScheduler, 6.0, True),
    ("1.0", CogVideoXDPMScheduler, 1.0, False),
    ("1.0", CogVideoXDPMScheduler, 6.0, False),
    ("1.0", CogVideoXDPMScheduler, 6.0, True),
    ("1.5", CogVideoXDPMScheduler, 6.0, False),
])
def test_three_steps_match_the_diffusers_pipeline(components, monkeypatch, version, scheduler_class, guidance_scale,
                                                  dynamic):
  (vae, our_vae), (transformer, our_transformer) = components["vae"], components[version]
  scheduler = scheduler_class(**SCHEDULER)
  pipeline = CogVideoXImageToVideoPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                                           scheduler=scheduler)
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
  prompt, negative = (rng.normal(size=(1, 7, 20)).astype(np.float32) for _ in range(2))
  # 9 frames = 3 latent frames; CogVideoX 1.5 samples 4 (whole temporal patches) and drops the first.
  frames, additional = padded_latent_frames(3, transformer.config.patch_size_t)
  assert (frames, additional) == ((4, 1) if version == "1.5" else (3, 0))
  initial = rng.normal(size=(1, frames, 4, 8, 8)).astype(np.float32)  # (B, F, C, h, w) as diffusers wants it
  expected, used_noise = _run_diffusers(
      pipeline, monkeypatch, image=torch.from_numpy(image), prompt_embeds=torch.from_numpy(prompt),
      negative_prompt_embeds=torch.from_numpy(negative), guidance_scale=guidance_scale, use_dynamic_cfg=dynamic,
      latents=torch.from_numpy(initial))
  assert expected.shape[1] == frames
  ours = sample_image_to_video(
      our_transformer, _scheduler_config(scheduler), _image_latents(our_vae, image), jnp.asarray(prompt),
      jnp.asarray(negative), num_latent_frames=3, num_inference_steps=3, guidance_scale=guidance_scale,
      use_dynamic_cfg=dynamic, key=jax.random.key(0), latents=jnp.asarray(np.moveaxis(initial, 2, -1)),
      step_noise=lambda index: jnp.asarray(np.moveaxis(used_noise[index], 2, -1)))
  # The pipeline drops the padding frames before decoding (not from output_type="latent").
  _assert_close(ours, expected[:, additional:])


@pytest.fixture(scope="module")
def text_components(tmp_path_factory):
  """A tiny T5 tokenizer and encoder: (transformers tokenizer, T5EncoderModel) and (ours, converted)."""
  root = tmp_path_factory.mktemp("text")
  _, tokenizer_folder, _ = make_t5_tokenizer(root / "tokenizer", CORPUS * 5, vocab_size=30)
  torch.manual_seed(1)
  text_encoder = randomize_norms(transformers.T5EncoderModel(transformers.T5Config(**TEXT_ENCODER)).eval(), 0.2)
  text_encoder.save_pretrained(root / "text_encoder")
  convert("text_encoder", root, root / "ours_text_encoder")
  return ((transformers.T5Tokenizer.from_pretrained(tokenizer_folder), text_encoder),
          (T5Tokenizer.from_folder(tokenizer_folder), checkpoints.load(root / "ours_text_encoder")))


def test_prompts_through_t5_match_the_diffusers_pipeline(components, text_components, monkeypatch):
  """Prompts in: the pipeline's tokenizer + T5 (max_sequence_length = the transformer's) against ours."""
  (vae, our_vae), (transformer, our_transformer) = components["vae"], components["1.0"]
  (tokenizer, text_encoder), (our_tokenizer, our_text_encoder) = text_components
  max_length = transformer.config.max_text_seq_length
  # One prompt truncated to max_length, one padded; a piece the vocabulary lacks.
  prompt, negative = "the camera flies over a castle at dusk on a lake", "dk ~"
  ids = our_tokenizer([prompt, negative], max_length=max_length)[0]
  assert ids[0, -1] == our_tokenizer.eos_id and ids[1, -1] == our_tokenizer.pad_id
  scheduler = CogVideoXDDIMScheduler(**SCHEDULER)
  pipeline = CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                           transformer=transformer, scheduler=scheduler)
  rng = np.random.default_rng(1)
  image = rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
  initial = rng.normal(size=(1, 3, 4, 8, 8)).astype(np.float32)
  expected, _ = _run_diffusers(pipeline, monkeypatch, image=torch.from_numpy(image), prompt=prompt,
                               negative_prompt=negative, guidance_scale=6.0, max_sequence_length=max_length,
                               latents=torch.from_numpy(initial))
  prompt_embeds, negative_embeds = (encode_prompt(our_tokenizer, our_text_encoder, [text], max_length)
                                    for text in (prompt, negative))
  ours = sample_image_to_video(
      our_transformer, _scheduler_config(scheduler), _image_latents(our_vae, image), prompt_embeds,
      negative_embeds, num_latent_frames=3, num_inference_steps=3, guidance_scale=6.0, key=jax.random.key(0),
      latents=jnp.asarray(np.moveaxis(initial, 2, -1)))
  _assert_close(ours, expected)


def test_shapes_are_validated(components):
  our_transformer, our_transformer_15 = components["1.0"][1], components["1.5"][1]
  config = SchedulerConfig.from_diffusers(dict(SCHEDULER, _class_name="CogVideoXDDIMScheduler"))
  prompt = jnp.zeros((1, 7, 20))
  with pytest.raises(WonderlandError, match="only generates at 8x8 latents"):
    sample_image_to_video(our_transformer, config, jnp.zeros((1, 1, 6, 8, 4)), prompt, key=jax.random.key(0),
                          num_latent_frames=3, num_inference_steps=2)
  with pytest.raises(WonderlandError, match="2 x latent channels"):
    sample_image_to_video(our_transformer, config, jnp.zeros((1, 1, 8, 8, 3)), prompt, key=jax.random.key(0),
                          num_latent_frames=3, num_inference_steps=2)
  with pytest.raises(WonderlandError, match="at least 1"):
    sample_image_to_video(our_transformer, config, jnp.zeros((1, 1, 8, 8, 4)), prompt, key=jax.random.key(0),
                          num_latent_frames=0, num_inference_steps=2)
  with pytest.raises(WonderlandError, match=r"must be \(1, 4, 8, 8, 4\) for 3 latent frames \(1 padding frame"):
    sample_image_to_video(our_transformer_15, config, jnp.zeros((1, 1, 8, 8, 4)), prompt, key=jax.random.key(0),
                          num_latent_frames=3, num_inference_steps=2, latents=jnp.zeros((1, 3, 8, 8, 4)))
  # Odd frame counts are padded for 1.5, and the padding dropped.
  out = sample_image_to_video(our_transformer_15, config, jnp.zeros((1, 1, 8, 8, 4)), prompt, key=jax.random.key(0),
                              num_latent_frames=3, num_inference_steps=1, guidance_scale=1.0)
  assert out.shape == (1, 3, 8, 8, 4) and bool(jnp.all(jnp.isfinite(out)))
