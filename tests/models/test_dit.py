"""The CogVideoX transformer against diffusers' CogVideoXTransformer3DModel: tiny random models saved by
diffusers, converted with `wonderland convert transformer` (CogVideoX 1.0) or its rule table for the config
(1.5), loaded with `checkpoints.load`; rematerialisation policies leave the gradients unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from flax import nnx

from tests.helpers.dit import CONFIGS, pipeline_rotary
from tests.helpers.reference_models import all_equations, randomize_norms
from wonderland_jax import checkpoints
from wonderland_jax.convert import ConversionError, cogvideox_transformer, convert, convert_state, open_source
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models import dit
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig, timestep_embedding
from wonderland_jax.nn.attention import dot_product_attention
from wonderland_jax.nn.remat import REMAT_POLICIES


def _converted(tmp_path, name):
  torch.manual_seed(0)
  reference = randomize_norms(CogVideoXTransformer3DModel(**CONFIGS[name]).eval(), 0.1)
  reference.save_pretrained(tmp_path / "pipeline" / "transformer", max_shard_size="20KB")
  convert("transformer", tmp_path / "pipeline", tmp_path / "converted")
  return reference, checkpoints.load(tmp_path / "converted")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_diffusers(tmp_path, name):
  reference, ours = _converted(tmp_path, name)
  assert isinstance(ours, CogVideoXTransformer)
  config = CONFIGS[name]
  rng = np.random.default_rng(0)
  # The sample size, other frame counts (learned embeddings then fall back to sin-cos, as in diffusers), and
  # another resolution where the model allows it. 1.5: frames in whole temporal patches, grids within the
  # sample size (diffusers' 'slice' rotary grids go no further).
  if "patch_size_t" in config:
    shapes = [(2, 6, 8), (4, 6, 8), (2, 4, 6)]
  else:
    shapes = [(3, 6, 8), (2, 6, 8)] + ([] if config.get("use_learned_positional_embeddings") else [(2, 4, 10)])
  # The I2V pipeline's ofs: one value, 2.0, for the whole (guided) batch.
  ofs = 2.0 if config.get("ofs_embed_dim") else None
  for frames, height, width in shapes:
    latents = rng.normal(size=(2, frames, height, width, config["in_channels"])).astype(np.float32)
    text = rng.normal(size=(2, 7, config["text_embed_dim"])).astype(np.float32)
    timestep = np.array([10, 981])
    with torch.no_grad():
      expected = reference(torch.from_numpy(np.moveaxis(latents, -1, 2).copy()), torch.from_numpy(text),
                           torch.from_numpy(timestep), ofs=None if ofs is None else torch.full((1,), ofs),
                           image_rotary_emb=pipeline_rotary(config, frames, height, width)).sample
    expected = np.moveaxis(expected.numpy(), 2, -1)
    got = np.asarray(ours(jnp.asarray(latents), jnp.asarray(text), jnp.asarray(timestep),
                          ofs=None if ofs is None else jnp.full((1,), ofs)))
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
  with pytest.raises(WonderlandError, match="unknown attention"):
    dot_product_attention(q, k, v, implementation="magic")


def test_bad_inputs_name_the_problem():
  model = CogVideoXTransformer(DiTConfig.from_diffusers(CONFIGS["5b_i2v_like"]), rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match="channels"):
    model(jnp.ones((1, 3, 6, 8, 5)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(WonderlandError, match="learned positional embedding is for 6x8"):
    model(jnp.ones((1, 3, 4, 8, 8)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(WonderlandError, match="not divisible by the patch size"):
    model(jnp.ones((1, 3, 5, 8, 8)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(WonderlandError, match="unknown field"):
    DiTConfig.from_diffusers({"nonsense": 1})
  i2v_15 = CogVideoXTransformer(DiTConfig.from_diffusers(CONFIGS["1.5_i2v_like"]), rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match="needs the `ofs` input"):
    i2v_15(jnp.ones((1, 2, 6, 8, 8)), jnp.ones((1, 7, 20)), jnp.array([1]))
  with pytest.raises(WonderlandError, match="not divisible by the patch size 2x2x2"):
    i2v_15(jnp.ones((1, 3, 6, 8, 8)), jnp.ones((1, 7, 20)), jnp.array([1]), ofs=2.0)
  with pytest.raises(WonderlandError, match="unknown remat policy 'sometimes'; choose one of none, full"):
    DiTConfig.from_diffusers(CONFIGS["5b_like"], remat="sometimes")
  with pytest.raises(WonderlandError, match="unknown remat policy"):
    CogVideoXTransformer(DiTConfig(remat="sometimes"), rngs=nnx.Rngs(0))


def test_rule_tables_follow_the_config(tmp_path):
  """1.0's patch embedding is a conv2d, 1.5's a linear under the same key; the wrong table says so."""
  for name in ("2b_like", "1.5_i2v_like"):
    config = cogvideox_transformer.config_from_source(dict(CONFIGS[name], _class_name="CogVideoXTransformer3DModel"))
    assert config["patch_size_t"] == CONFIGS[name].get("patch_size_t")
    layout = {rule.pattern: rule.layout for rule in reversed(cogvideox_transformer.rules_for(config))}
    assert layout[r"patch_embed\.proj\.weight"] == ("linear" if "patch_size_t" in CONFIGS[name] else "conv2d")
  torch.manual_seed(0)
  CogVideoXTransformer3DModel(**CONFIGS["1.5_i2v_like"]).save_pretrained(tmp_path / "transformer")
  source = open_source(tmp_path / "transformer")
  abstract = checkpoints.abstract_model(dit.build, cogvideox_transformer.config_from_source(source.config))
  _, report = convert_state(source, cogvideox_transformer.RULES_1_5, abstract)
  assert report.num_tensors == len(source)  # ofs_embedding.linear_1/2 and the patch linear's bias included
  with pytest.raises(ConversionError, match=r"patch_embed\.proj\.weight.*wrong rank for layout conv2d"):
    convert_state(source, cogvideox_transformer.RULES_1_0, abstract)


def _primitive_names(jaxpr):
  """Every primitive of a jaxpr, sub-jaxprs (jit, remat, ...) included."""
  return {eqn.primitive.name for eqn in all_equations(jaxpr)}


def test_remat_policies_keep_the_gradients():
  """Rematerialisation changes what is stored, not what is computed (eager grads: XLA compiles are slow here)."""
  rng = np.random.default_rng(0)
  config = CONFIGS["1.5_i2v_like"]
  latents = jnp.asarray(rng.normal(size=(1, 2, 6, 8, config["in_channels"])), jnp.float32)
  text = jnp.asarray(rng.normal(size=(1, 7, 20)), jnp.float32)
  params = None
  grads, jaxprs = {}, {}
  for policy in REMAT_POLICIES:
    model = CogVideoXTransformer(DiTConfig.from_diffusers(config, remat=policy), rngs=nnx.Rngs(0))
    graphdef, model_params = nnx.split(model, nnx.Param)
    params = model_params if params is None else params  # the same weights for every policy

    def loss(params, graphdef=graphdef):
      out = nnx.merge(graphdef, params)(latents, text, jnp.array([500]), ofs=2.0)
      return jnp.mean(out ** 2)

    grads[policy] = jax.grad(loss)(params)
    jaxprs[policy] = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
  remat_primitives = {"checkpoint", "remat", "remat2"}
  assert not _primitive_names(jaxprs["none"]) & remat_primitives
  assert _primitive_names(jaxprs["full"]) & remat_primitives
  reference = grads["none"]
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(reference))
  assert scale > 0
  for policy, grad in grads.items():
    errors = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), grad, reference))
    assert max(errors) <= 1e-6 * scale, f"{policy}: gradients differ by {max(errors):.2e}"
