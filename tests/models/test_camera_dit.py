"""The camera-guided transformer: equal to the (diffusers-converted) base at initialisation for every branch
choice, LoRA maths, merging, branch-only gradients, camera-token shapes at the published sizes, branch
checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from flax import nnx

from tests.helpers.dit import CONFIGS, perturb, pipeline_rotary
from tests.helpers.reference_models import all_equations, randomize_norms
from wonderland_jax import checkpoints
from wonderland_jax.convert import convert
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models import camera_dit
from wonderland_jax.models.camera_dit import BRANCH, CameraConfig, CameraDiT, CameraEncoder
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig, Linear

BASE = dict(CONFIGS["5b_i2v_like"], num_layers=3)
CAMERA = dict(controlnet_layers=2, lora_rank=4, encoder_channels=8)


def _inputs(batch=2, frames=3, seed=0):
  rng = np.random.default_rng(seed)
  latents = jnp.asarray(rng.normal(size=(batch, frames, 6, 8, 8)), jnp.float32)
  text = jnp.asarray(rng.normal(size=(batch, 7, 20)), jnp.float32)
  plucker = jnp.asarray(rng.normal(size=(batch, 1 + 4 * (frames - 1), 48, 64, 6)), jnp.float32)
  return latents, text, jnp.array([10, 700][:batch]), plucker


def _base(seed=0):
  return CogVideoXTransformer(DiTConfig.from_diffusers(BASE), rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("branches", ["dual", "controlnet", "lora"])
def test_equals_the_converted_base_at_initialisation(tmp_path, branches):
  torch.manual_seed(0)
  reference = randomize_norms(CogVideoXTransformer3DModel(**BASE).eval(), 0.1)
  reference.save_pretrained(tmp_path / "pipeline" / "transformer")
  convert("transformer", tmp_path / "pipeline", tmp_path / "converted")
  base = checkpoints.load(tmp_path / "converted")
  latents, text, timestep, plucker = _inputs()
  with torch.no_grad():
    expected = reference(torch.from_numpy(np.moveaxis(np.asarray(latents), -1, 2).copy()),
                         torch.from_numpy(np.array(text)), torch.from_numpy(np.array(timestep)),
                         image_rotary_emb=pipeline_rotary(BASE, 3, 6, 8)).sample
  expected = np.moveaxis(expected.numpy(), 2, -1)
  base_out = np.asarray(base(latents, text, timestep))
  model = CameraDiT(base, CameraConfig(branches=branches, **CAMERA), rngs=nnx.Rngs(1))
  out = np.asarray(model(latents, text, timestep, plucker))
  np.testing.assert_array_equal(out, base_out)  # zero-linears, B = 0 and [I; 0]: exactly the base
  assert np.abs(out - expected).max() <= 1e-4 * np.abs(expected).max()
  names = set(nnx.to_pure_dict(nnx.state(model, BRANCH)))
  assert names == {"dual": {"base", "control_encoder", "control_blocks", "control_out", "lora_encoder", "lora_proj"},
                   "controlnet": {"control_encoder", "control_blocks", "control_out"},
                   "lora": {"base", "lora_encoder", "lora_proj"}}[branches]
  # Trained branches change the output, and the camera matters.
  perturb(model)
  moved = np.asarray(model(latents, text, timestep, plucker))
  other_camera = np.asarray(model(latents, text, timestep, plucker[:, ::-1]))
  assert np.abs(moved - base_out).max() > 1e-3 and np.abs(moved - other_camera).max() > 1e-4


def test_controlnet_copies_start_from_the_base_blocks():
  base = _base()
  model = CameraDiT(base, CameraConfig(**CAMERA), rngs=nnx.Rngs(1))
  for index in range(CAMERA["controlnet_layers"]):
    copy = nnx.to_pure_dict(nnx.state(model.control_blocks[index], nnx.Param))
    original = nnx.to_pure_dict(nnx.state(base.transformer_blocks[index], nnx.Param))
    original["attn1"] = {k: {n: v for n, v in layer.items() if n != "lora"} if isinstance(layer, dict) else layer
                         for k, layer in original["attn1"].items()}
    original["attn1"]["to_out"] = {0: {n: v for n, v in original["attn1"]["to_out"][0].items() if n != "lora"}}
    jax.tree.map(np.testing.assert_array_equal, copy, original)
  # Copies, not shared: training a copy leaves the frozen block alone.
  model.control_blocks[0].attn1.to_q.kernel.set_value(jnp.zeros_like(model.control_blocks[0].attn1.to_q.kernel[...]))
  assert float(jnp.abs(base.transformer_blocks[0].attn1.to_q.kernel[...]).max()) > 0


def test_lora_linear_against_the_formula():
  rng = np.random.default_rng(0)
  layer = Linear(6, 5, rngs=nnx.Rngs(0))
  layer.lora = nnx.LoRA(6, 3, 5, rngs=nnx.Rngs(1))
  layer.lora_scale = 0.5
  b = rng.normal(size=(3, 5)).astype(np.float32)
  layer.lora.lora_b.set_value(jnp.asarray(b))
  x = rng.normal(size=(4, 6)).astype(np.float32)
  w, bias, a = (np.asarray(v, np.float64) for v in (layer.kernel[...], layer.bias[...], layer.lora.lora_a[...]))
  expected = x @ w + bias + 0.5 * (x @ a) @ b
  np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("targets", [("attn",), ("attn", "ff")])
def test_merged_lora_gives_the_same_output(targets):
  model = CameraDiT(_base(), CameraConfig(branches="lora", lora_targets=targets, lora_alpha=8.0, **CAMERA),
                    rngs=nnx.Rngs(1))
  perturb(model)
  inputs = _inputs()
  before = np.asarray(model(*inputs))
  num_adapters = len(jax.tree.leaves(nnx.state(model.base, nnx.LoRAParam)))
  assert num_adapters == 3 * 2 * (4 if targets == ("attn",) else 6)
  camera_dit.merge_lora(model)
  assert not jax.tree.leaves(nnx.state(model.base, nnx.LoRAParam))
  np.testing.assert_allclose(np.asarray(model(*inputs)), before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def _dot_shapes(jaxpr):
  """Output shapes of every dot_general in a jaxpr and its sub-jaxprs."""
  return [tuple(eqn.outvars[0].aval.shape) for eqn in all_equations(jaxpr) if eqn.primitive.name == "dot_general"]


def test_only_branch_gradients_are_computed():
  model = CameraDiT(_base(), CameraConfig(**CAMERA), rngs=nnx.Rngs(1))
  graphdef, trainable, frozen, rest = nnx.split(model, BRANCH, nnx.Param, ...)
  latents, text, timestep, plucker = _inputs(batch=1)

  def loss(trainable):
    return jnp.mean(nnx.merge(graphdef, trainable, frozen, rest)(latents, text, timestep, plucker) ** 2)

  jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable).jaxpr
  dim = model.config.inner_dim
  shapes = _dot_shapes(jaxpr)
  # The frozen feed-forward kernels (dim, 4 dim) have no adapters: a dot of that shape would be their gradient.
  # The copies in the ControlNet branch do need theirs, so count: one per trainable copy only.
  assert shapes.count((dim, 4 * dim)) == CAMERA["controlnet_layers"]
  assert shapes.count((4 * dim, dim)) == CAMERA["controlnet_layers"]
  grads = jax.grad(loss)(trainable)
  assert set(nnx.to_pure_dict(grads)) == set(nnx.to_pure_dict(trainable))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_every_branch_param_learns_from_initialisation():
  """Three plain gradient steps from the initialisation reach every branch param. The zero inits must leave a
  path: ControlNet: the zero control_out first, then its copied blocks and its encoder's output layer, then the
  encoder's convolutions; LoRA: the random encoder output reaches the zero camera rows of lora_proj at once, the
  encoder at the second step, and the B = 0 adapters reach A at the second step. (With both LoRA-branch halves
  zero, as before, neither ever got a gradient: that branch could not learn the cameras.)"""
  model = CameraDiT(_base(), CameraConfig(**CAMERA), rngs=nnx.Rngs(1))
  graphdef, trainable, rest = nnx.split(model, BRANCH, ...)
  latents, text, timestep, plucker = _inputs(batch=1)
  target = jnp.asarray(np.random.default_rng(3).normal(size=latents.shape[:-1] + (4,)), jnp.float32)

  @jax.jit
  def gradient(trainable):
    loss = lambda params: jnp.mean((nnx.merge(graphdef, params, rest)(latents, text, timestep, plucker) - target) ** 2)
    return jax.grad(loss)(trainable)

  reached = jax.tree.map(lambda x: False, trainable)
  for step in range(3):
    grads = gradient(trainable)
    if step == 0:  # lora_proj's camera rows learn from the first step (their input, the camera tokens, is not 0)
      camera_rows = nnx.to_pure_dict(grads)["lora_proj"]["kernel"][model.config.inner_dim:]
      assert float(jnp.abs(camera_rows).max()) > 0
    reached = jax.tree.map(lambda done, g: done or bool(jnp.any(g != 0)), reached, grads)
    trainable = jax.tree.map(lambda p, g: p - 0.1 * g, trainable, grads)
  dead = [jax.tree_util.keystr(path) for path, ok in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(reached))
          if not ok]
  assert not dead, f"branch params with no gradient in three steps: {dead}"


@pytest.mark.parametrize("name,frames,height,width,tokens", [
    ("CogVideoX-5B-I2V", 49, 480, 720, 13 * 30 * 45),
    ("CogVideoX1.5-5B-I2V", 85, 768, 1360, 11 * 48 * 85),
])
def test_camera_tokens_at_the_published_sizes(name, frames, height, width, tokens):
  published = {"CogVideoX-5B-I2V": dict(num_attention_heads=48, attention_head_dim=64, in_channels=32,
                                        out_channels=16, num_layers=42, text_embed_dim=4096),
               "CogVideoX1.5-5B-I2V": dict(num_attention_heads=48, attention_head_dim=64, in_channels=32,
                                           out_channels=16, num_layers=42, patch_size_t=2, patch_bias=False,
                                           ofs_embed_dim=512)}[name]
  base = DiTConfig.from_diffusers(dict(published, use_rotary_positional_embeddings=True))
  encoder = nnx.eval_shape(lambda: CameraEncoder(base, CameraConfig(), rngs=nnx.Rngs(0)))
  out = jax.eval_shape(lambda e, p: e(p), encoder, jax.ShapeDtypeStruct((1, frames, height, width, 6), jnp.float32))
  assert out.shape == (1, tokens, 3072)


def test_branch_checkpoints_round_trip(tmp_path):
  base = _base()
  checkpoints.save(tmp_path / "base", base, kind="cogvideox_transformer", config=base.config.to_dict())
  model = CameraDiT(base, CameraConfig(**CAMERA), rngs=nnx.Rngs(1))
  perturb(model)
  inputs = _inputs()
  expected = np.asarray(model(*inputs))
  camera_dit.save_branch(tmp_path / "branch", model)
  base_bytes = sum(f.stat().st_size for f in (tmp_path / "base").rglob("*") if f.is_file())
  branch_files = [f for f in (tmp_path / "branch").rglob("*") if f.is_file()]
  assert branch_files and not any("norm_final" in f.name for f in branch_files)
  loaded = camera_dit.load(tmp_path / "base", tmp_path / "branch")
  np.testing.assert_array_equal(np.asarray(loaded(*inputs)), expected)
  merged = camera_dit.load(tmp_path / "base", tmp_path / "branch", merge=True)
  np.testing.assert_allclose(np.asarray(merged(*inputs)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  assert base_bytes > 0
  other = CogVideoXTransformer(DiTConfig.from_diffusers(dict(BASE, num_layers=2)), rngs=nnx.Rngs(0))
  with pytest.raises(InputFileError, match=r"different base transformer: num_layers 3 \(branch\) vs 2 \(base\)"):
    camera_dit.load(other, tmp_path / "branch")
  with pytest.raises(InputFileError, match="not a camera branch"):
    camera_dit.load(base, tmp_path / "base")


def test_bad_configs_and_inputs_name_the_problem():
  base = _base()
  with pytest.raises(WonderlandError, match="branches='both'"):
    CameraDiT(base, CameraConfig(branches="both"), rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match=r"controlnet_layers=4 must be in 1\.\.3"):
    CameraDiT(base, CameraConfig(controlnet_layers=4), rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match=r"lora_targets \['mlp'\]"):
    CameraDiT(base, CameraConfig(lora_targets=("mlp",), **dict(CAMERA, controlnet_layers=1)), rngs=nnx.Rngs(0))
  with pytest.raises(WonderlandError, match="unknown field"):
    CameraConfig.from_dict({"rank": 3})
  model = CameraDiT(base, CameraConfig(**CAMERA), rngs=nnx.Rngs(0))
  latents, text, timestep, plucker = _inputs()
  with pytest.raises(WonderlandError, match=r"plucker rays must be \(2, 9, 48, 64, 6\)"):
    model(latents, text, timestep, plucker[:, :5])
