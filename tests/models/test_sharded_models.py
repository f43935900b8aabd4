"""Every param of the CogVideoX transformer (alone and with camera branches), the T5 encoder, the VAE and the LaLRM
carries one logical axis name per
dimension, and a checkpoint of each loads onto an 8-device mesh by logical rules (FSDP + tensor) with the same
forward as on one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from wonderland_jax import checkpoints
from wonderland_jax.models import camera_dit
from wonderland_jax.models.dit import CogVideoXTransformer, DiTConfig
from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig
from wonderland_jax.models.t5 import T5Config, T5Encoder
from wonderland_jax.models.vae import CogVideoXVAE, VAEConfig
from wonderland_jax.nn.partitioning import DEFAULT_RULES, activation_rules
from wonderland_jax.parallel.mesh import AXES, make_mesh
from wonderland_jax.train.config import load_config
from wonderland_jax.train.plan import plan_training
from wonderland_jax.train.tasks import make_task

RULES = [("embed", "fsdp"), ("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"), ("channels", "tensor")]


def _dit():
  config = DiTConfig(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=12,
                     text_embed_dim=20, num_layers=2, sample_width=8, sample_height=6, sample_frames=9,
                     max_text_seq_length=7, use_rotary_positional_embeddings=True,
                     use_learned_positional_embeddings=True)
  rng = np.random.default_rng(0)
  inputs = (rng.normal(size=(2, 3, 6, 8, 8)).astype(np.float32), rng.normal(size=(2, 7, 20)).astype(np.float32),
            np.array([10, 700], np.int32))
  return CogVideoXTransformer(config, rngs=nnx.Rngs(0)), "cogvideox_transformer", config.to_dict(), inputs


def _t5():
  config = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2)
  ids = np.random.default_rng(0).integers(0, 64, size=(2, 9)).astype(np.int32)
  return T5Encoder(config, rngs=nnx.Rngs(0)), "t5_encoder", config.to_dict(), (ids,)


def _lalrm():
  config = LaLRMConfig(hidden_size=32, pose_dim=16, num_layers=2, head_dim=16, patch_size=2, gaussian_stride=16)
  rng = np.random.default_rng(0)
  inputs = (rng.normal(size=(2, 2, 4, 4, 16)).astype(np.float32),
            rng.normal(size=(2, 5, 32, 32, 6)).astype(np.float32))
  return LaLRM(config, rngs=nnx.Rngs(0)), "lalrm", config.to_dict(), inputs


def _camera_dit():
  base, _, _, inputs = _dit()
  model = camera_dit.CameraDiT(base, camera_dit.CameraConfig(controlnet_layers=1, lora_rank=4, encoder_channels=8,
                                                             lora_targets=("attn", "ff")), rngs=nnx.Rngs(1))
  # Non-zero branch params, so the sharded branches are exercised.
  state = nnx.state(model, camera_dit.BRANCH)
  nnx.update(model, jax.tree.map(lambda x: x + 0.05 * jnp.cos(jnp.arange(x.size).reshape(x.shape)), state))
  plucker = np.random.default_rng(1).normal(size=(2, 9, 48, 64, 6)).astype(np.float32)
  return model, "camera_dit", camera_dit.model_config(model), inputs + (plucker,)


def _vae():
  config = VAEConfig(block_out_channels=(8, 16), down_block_types=("CogVideoXDownBlock3D",) * 2,
                     up_block_types=("CogVideoXUpBlock3D",) * 2, latent_channels=4, layers_per_block=1,
                     norm_num_groups=4)
  video = np.random.default_rng(0).uniform(-1, 1, size=(2, 5, 16, 16, 3)).astype(np.float32)
  return VAEWrapper(config), "vae_roundtrip_test", config.to_dict(), (video,)


class VAEWrapper(CogVideoXVAE):
  """encode (posterior mean) then decode: a forward of the whole VAE."""

  def __init__(self, config):
    super().__init__(config, rngs=nnx.Rngs(0))

  def __call__(self, video):
    return self.decode(self.encode(video).mean)


checkpoints.register_model("vae_roundtrip_test", lambda config, rngs: VAEWrapper(VAEConfig.from_diffusers(config)))
MODELS = {"dit": _dit, "t5": _t5, "lalrm": _lalrm, "camera_dit": _camera_dit, "vae": _vae}


def _logical_names(variable):
  return variable.get_metadata().get("out_sharding")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_param_has_logical_axis_names(name):
  model, *_ = MODELS[name]()
  params = nnx.state(model, nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert leaves
  for path, variable in leaves:
    names = _logical_names(variable)
    assert names is not None, f"{name}: {jax.tree_util.keystr(path)} has no logical axis names"
    assert len(names) == variable.get_value().ndim, (path, names, variable.get_value().shape)
  assert any({"heads", "channels"} & set(_logical_names(v) or ()) for _, v in leaves)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_sharded_forward_equals_single_device(tmp_path, name):
  model, kind, config, inputs = MODELS[name]()
  expected = np.asarray(model(*inputs))
  checkpoints.save(tmp_path / name, model, kind=kind, config=config)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
  loaded = checkpoints.load(tmp_path / name, mesh=mesh, rules=RULES)
  specs = [v.get_value().sharding.spec for v in jax.tree_util.tree_leaves(
      nnx.state(loaded, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))]
  assert any("tensor" in spec for spec in specs)
  assert name == "vae" or any("fsdp" in spec for spec in specs)  # the VAE's channels go to 'tensor' only here
  assert all(isinstance(spec, PartitionSpec) for spec in specs)
  forward = nnx.jit(lambda module, *args: module(*args))
  out = forward(loaded, *(jnp.asarray(x) for x in inputs))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name,method,mesh_spec", [("dit", "ring", "fsdp=2,context=2,tensor=2"),
                                                   ("dit", "ulysses", "data=4,context=2"),
                                                   ("lalrm", "ring", "fsdp=2,context=2,tensor=2"),
                                                   ("lalrm", "ulysses", "fsdp=4,context=2")])
def test_context_parallel_forward_equals_single_device(tmp_path, name, method, mesh_spec):
  """FSDP + tensor + context parallelism are config changes: the same checkpoint, `sequence_parallel` set."""
  model, kind, config, inputs = MODELS[name]()
  expected = np.asarray(model(*inputs))
  config = dict(config, sequence_parallel=method)
  checkpoints.save(tmp_path / name, model, kind=kind, config=config)
  mesh = make_mesh(mesh_spec)
  loaded = checkpoints.load(tmp_path / name, mesh=mesh, rules=DEFAULT_RULES)
  with jax.set_mesh(mesh):
    out = nnx.jit(lambda module, *args: module(*args))(loaded, *(jnp.asarray(x) for x in inputs))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_main_activations_are_constrained_only_under_rules_and_a_mesh():
  model, _, _, inputs = MODELS["lalrm"]()
  # A fresh function per trace: JAX caches traces by function and mesh, not by the rules context.
  trace = lambda: jax.make_jaxpr(lambda *args: model(*args))(*inputs)
  count = lambda jaxpr: str(jaxpr).count("sharding_constraint")
  plain = trace()
  mesh = make_mesh("data=2,context=4")
  with jax.set_mesh(mesh):
    no_rules = trace()
    with activation_rules(DEFAULT_RULES):
      constrained = trace()
  assert count(plain) == count(no_rules) == 0
  assert count(constrained) == 1 + 2  # the input tokens and after each of the 2 blocks
  assert "spec=P(('data', 'fsdp'), 'context', None)" in str(constrained)  # batch: data x fsdp, tokens: context


def _step_flops_per_device(num_devices: int) -> float:
  """XLA's FLOPs per device of the tiny camera DiT's training step with full remat (as the 5B config) on an
  fsdp=N mesh with one clip per device (`train.plan.plan_training`: abstract inputs, nothing allocated)."""
  config = load_config("camera_dit_tiny", ["--config.base.remat=full", "--config.base.random_config.num_layers=2",
                                           "--config.camera.controlnet_layers=1",
                                           "--config.base.random_config.max_text_seq_length=32",
                                           f"--config.train.batch_size={num_devices}"])
  devices = np.array(jax.devices()[:num_devices]).reshape(1, num_devices, 1, 1)
  mesh = jax.sharding.Mesh(devices, AXES, axis_types=(jax.sharding.AxisType.Auto,) * 4)
  return plan_training(make_task("camera-dit", config), config, mesh).flops


def test_sharded_step_has_no_replicated_per_clip_work():
  """At one clip per device the FLOPs per device do not grow with the mesh: no part of the step (the text stream
  of rematerialised blocks was one) is computed for the whole global batch on every device."""
  four, eight = _step_flops_per_device(4), _step_flops_per_device(8)
  assert abs(eight - four) < 0.005 * four, (four, eight)
