"""The CogVideoX transformer against diffusers' CogVideoXTransformer3DModel: tiny random models saved by
diffusers, converted with `wonderland convert transformer`, loaded with `checkpoints.load`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from diffusers.models.embeddings import get_3d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import get_resize_crop_region_for_grid
from flax import nnx

from tests.reference_models import randomize_norms
from wonderland_jax import checkpoints
from wonderland_jax.convert import convert
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig, timestep_embedding
from wonderland_jax.nn.attention import dot_product_attention

BASE = dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=12,
            text_embed_dim=20, num_layers=2, sample_width=8, sample_height=6, sample_frames=9, max_text_seq_length=7)
CONFIGS = {
    "5b_i2v_like": dict(BASE, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True),
    "2b_like": dict(BASE, use_rotary_positional_embeddings=False),
    "5b_like": dict(BASE, use_rotary_positional_embeddings=True, attention_bias=False),
}


def _converted(tmp_path, name):
  torch.manual_seed(0)
  reference = randomize_norms(CogVideoXTransformer3DModel(**CONFIGS[name]).eval(), 0.1)
  reference.save_pretrained(tmp_path / "pipeline" / "transformer", max_shard_size="20KB")
  convert("transformer", tmp_path / "pipeline", tmp_path / "converted")
  return reference, checkpoints.load(tmp_path / "converted")


def _pipeline_rotary(config, frames, height, width):
  """What diffusers' CogVideoX pipelines pass as image_rotary_emb (latent sizes in, patch size 2)."""
  if not config.get("use_rotary_positional_embeddings"):
    return None
  grid_height, grid_width = height // 2, width // 2
  crops = get_resize_crop_region_for_grid((grid_height, grid_width), config["sample_width"] // 2,
                                          config["sample_height"] // 2)
  return get_3d_rotary_pos_embed(embed_dim=config["attention_head_dim"], crops_coords=crops,
                                 grid_size=(grid_height, grid_width), temporal_size=frames)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_diffusers(tmp_path, name):
  reference, ours = _converted(tmp_path, name)
  assert isinstance(ours, CogVideoXTransformer)
  config = CONFIGS[name]
  rng = np.random.default_rng(0)
  # The sample size, other frame counts (learned embeddings then fall back to sin-cos, as in diffusers), and
  # another resolution where the model allows it.
  shapes = [(3, 6, 8), (2, 6, 8)] + ([] if config.get("use_learned_positional_embeddings") else [(2, 4, 10)])
  for frames, height, width in shapes:
    latents = rng.normal(size=(2, frames, height, width, config["in_channels"])).astype(np.float32)
    text = rng.normal(size=(2, 7, config["text_embed_dim"])).astype(np.float32)
    timestep = np.array([10, 981])
    with torch.no_grad():
      expected = reference(torch.from_numpy(np.moveaxis(latents, -1, 2).copy()), torch.from_numpy(text),
                           torch.from_numpy(timestep),
                           image_rotary_emb=_pipeline_rotary(config, frames, height, width)).sample
    expected = np.moveaxis(expected.numpy(), 2, -1)
    got = np.asarray(ours(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timestep)))
    assert got.shape == expected.shape
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error <= 1e-4, f"{name} {frames}x{height}x{width}: max error {error:.2e}"


def test_jit_and_bfloat16_compute():
  config = DiTConfig.from_diffusers(CONFIGS["5b_like"])
  model = CogVideoXTransformer(config, rngs=nnx.Rngs(0))
  bf16 = CogVideoXTransformer(DiTConfig.from_diffusers(CONFIGS["5b_like"], dtype="bfloat16"), rngs=nnx.Rngs(0))
  nnx.update(bf16, nnx.state(model, nnx.Param))
  latents, text = jnp.ones((1, 2, 6, 8, 8)), jnp.ones((1, 7, 20))
  forward = nnx.jit(lambda m, x, c, t: m(x, c, t))
  full = forward(model, latents, text, jnp.array([3]))
  half = forward(bf16, latents, text, jnp.array([3]))
  assert bf16.transformer_blocks[0].attn1.to_q.kernel[...].dtype == jnp.float32  # params stay float32
  assert float(jnp.abs(full - half).max()) <= 0.05 * float(jnp.abs(full).max())


def test_timestep_embedding_and_attention():
  emb = timestep_embedding(jnp.array([0.0, 999.0]), 8, flip_sin_to_cos=True, freq_shift=0)
  np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)  # cos first at t = 0
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 5, 3, 4)), jnp.float32) for _ in range(3))
  scores = jnp.einsum("bqnd,bknd->bnqk", q, k) / 2.0
  expected = jnp.einsum("bnqk,bknd->bqnd", jax.nn.softmax(scores, -1), v)
  np.testing.assert_allclose(dot_product_attention(q, k, v), expected, atol=1e-5)
  with pytest.raises(Exception, match="unknown attention"):
    dot_product_attention(q, k, v, implementation="magic")


def test_bad_inputs_name_the_problem():
  model = CogVideoXTransformer(DiTConfig.from_diffusers(CONFIGS["5b_i2v_like"]), rngs=nnx.Rngs(0))
  with pytest.raises(Exception, match="channels"):
    model(jnp.ones((1, 3, 6, 8, 5)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(Exception, match="learned positional embedding is for 6x8"):
    model(jnp.ones((1, 3, 4, 8, 8)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(Exception, match="not divisible by the patch size"):
    model(jnp.ones((1, 3, 5, 8, 8)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(Exception, match="unknown field"):
    DiTConfig.from_diffusers({"nonsense": 1})
