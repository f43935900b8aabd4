"""Meshes from axis specs, logical rules, and ahead-of-time plans of a training step on the 8 fake CPU devices
(FSDP shards the params' memory; the figures are XLA's), plus `wonderland plan` on the tiny camera DiT."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from wonderland_jax.cli import main
from wonderland_jax.errors import WonderlandError
from wonderland_jax.nn.partitioning import DEFAULT_RULES, axes, param_init_context, state_shardings
from wonderland_jax.parallel.mesh import AXES, make_mesh, parse_axes
from wonderland_jax.train.loop import Task
from wonderland_jax.train.plan import ACCELERATORS, plan_training


def test_parse_and_make_mesh():
  assert parse_axes("data=2,fsdp=-1") == {"data": 2, "fsdp": -1, "context": 1, "tensor": 1}
  mesh = make_mesh("data=2,fsdp=-1")
  assert mesh.axis_names == AXES and dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  assert dict(make_mesh().shape)["data"] == 8
  assert dict(make_mesh({"tensor": 2, "context": 4}).shape) == {"data": 1, "fsdp": 1, "context": 4, "tensor": 2}
  for bad, message in [("data=3", r"has 3 devices; there are 8"), ("model=2", "unknown axes"),
                       ("data=-1,fsdp=-1", "only one axis"), ("data=x", "axis=size pairs"),
                       ("data=3,fsdp=-1", "not divisible by 3")]:
    with pytest.raises(WonderlandError, match=message):
      make_mesh(bad)


def test_hybrid_mesh_puts_slices_on_the_outer_axis():
  mesh = make_mesh("fsdp=4", dcn="data=2")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "context": 1, "tensor": 1}
  devices = np.asarray(mesh.devices).reshape(2, 4)
  # Each slice (4 consecutive devices here) is one 'data' row: FSDP traffic stays inside a slice.
  assert [sorted(d.id for d in row) for row in devices] == [[0, 1, 2, 3], [4, 5, 6, 7]]
  with pytest.raises(WonderlandError, match="do not split into 3 slices"):
    make_mesh("fsdp=2", dcn="data=3")


class Named(nnx.Module):
  def __init__(self, rngs):
    with param_init_context():
      self.up = nnx.Linear(64, 256, kernel_metadata=axes("embed", "mlp"), bias_metadata=axes("mlp"), rngs=rngs)
      self.down = nnx.Linear(256, 64, kernel_metadata=axes("mlp", "embed"), bias_metadata=axes("embed"), rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x)))


def _task():
  def loss_fn(model, batch, key):
    del key
    return jnp.mean((model(batch["x"]) - batch["x"]) ** 2), {}

  return Task(name="named", build_model=lambda config, rngs: Named(rngs), loss_fn=loss_fn,
              make_iterator=lambda config: iter(()),
              abstract_batch=lambda config: {"x": jax.ShapeDtypeStruct((int(config.train.batch_size), 16, 64),
                                                                       jnp.float32)})


def _config():
  return ml_collections.ConfigDict(dict(
      seed=0, train=dict(steps=10, batch_size=8, grad_accum=1),
      optimizer=dict(learning_rate=1e-3, warmup_steps=1, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, clip_norm=1.0,
                     final_lr_fraction=0.1)))


def test_state_shardings_follow_the_logical_names():
  mesh = make_mesh("fsdp=4,tensor=2")
  shardings = state_shardings(nnx.state(Named(nnx.Rngs(0)), nnx.Param), mesh, DEFAULT_RULES)
  assert shardings["up"]["kernel"].spec == PartitionSpec("fsdp", "tensor")
  assert shardings["down"]["bias"].spec == PartitionSpec("fsdp")


def test_fsdp_plan_holds_an_eighth_of_the_state_per_device():
  replicated = plan_training(_task(), _config(), make_mesh("data=8"))
  sharded = plan_training(_task(), _config(), make_mesh("fsdp=8"))
  params = 64 * 256 * 2 + 256 + 64
  assert replicated.num_trainable == params and replicated.devices == 8
  # Arguments: params + Adam's two moments (+ scalars) + the batch slice; FSDP splits the first three 8 ways.
  state_bytes = 3 * params * 4
  batch_bytes = 16 * 64 * 4  # one example per device either way
  assert abs(replicated.argument_bytes - state_bytes - batch_bytes) < 1024
  # FSDP splits the dims named 'embed'; the up-projection's bias (256,) is 'mlp' only: replicated.
  sharded_state = 3 * 4 * (64 * 256 * 2 + 64) / 8 + 3 * 4 * 256
  assert abs(sharded.argument_bytes - sharded_state - batch_bytes) < 64
  assert replicated.argument_bytes > 6 * sharded.argument_bytes - 6 * batch_bytes
  # The step's FLOPs per device: forward + backward of two matmuls on one example of 16 tokens, ~6 x 2 x params.
  assert 0.5 * 6 * 16 * 2 * 64 * 256 < sharded.flops < 3 * 6 * 16 * 2 * 64 * 256
  table = sharded.table(ACCELERATORS["h100"], 0.4)
  assert "fsdp=8 (8 devices)" in table and sharded.fits(ACCELERATORS["h100"])


def test_plan_command_on_the_tiny_camera_dit(tmp_path):
  out = tmp_path / "plan.json"
  assert main(["plan", "--config", "camera_dit_tiny", "--mesh", "fsdp=4", "--accelerator", "tpu-v5e", "--json",
               str(out), "--config.train.batch_size=4", "--config.base.random_config.num_layers=2",
               "--config.camera.controlnet_layers=1"]) == 0
  plan = json.loads(out.read_text())
  assert plan["devices"] == 4 and plan["mesh"]["fsdp"] == 4 and plan["global_batch"] == 4
  assert plan["flops"] > 0 and plan["argument_bytes"] > 0 and plan["fits"] and plan["accelerator"] == "TPU v5e"
  assert main(["plan", "--config", "camera_dit_tiny", "--mesh", "fsdp=-1"]) == 2


def test_params_are_born_sharded_and_checkpoints_restore_onto_the_building_mesh(tmp_path):
  from wonderland_jax import checkpoints  # noqa: PLC0415
  from wonderland_jax.nn.partitioning import building_on  # noqa: PLC0415
  from wonderland_jax.train.loop import setup  # noqa: PLC0415
  mesh = make_mesh("fsdp=4,tensor=2")
  prepared = setup(_task(), _config(), mesh=mesh)
  kernel = prepared.state.params["up"]["kernel"]
  assert kernel.sharding.spec == PartitionSpec("fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (16, 128)
  lalrm = {"hidden_size": 32, "pose_dim": 16, "num_layers": 1, "head_dim": 16, "patch_size": 2, "gaussian_stride": 16}
  checkpoints.save(tmp_path / "lalrm", checkpoints.model_builder("lalrm")(lalrm, nnx.Rngs(0)), kind="lalrm",
                   config=lalrm)
  with building_on(mesh, DEFAULT_RULES):
    loaded = checkpoints.load(tmp_path / "lalrm")
  assert loaded.blocks[0].mlp.fc1.kernel[...].sharding.spec == PartitionSpec("fsdp", "tensor")


def test_extrapolated_plan_matches_the_compiled_one():
  from wonderland_jax.train.config import load_config  # noqa: PLC0415
  from wonderland_jax.train.plan import plan_extrapolated  # noqa: PLC0415
  from wonderland_jax.train.tasks import DEPTH_KEYS, make_task, planning_config  # noqa: PLC0415
  config = planning_config("lalrm", load_config("lalrm_tiny", ["--config.train.batch_size=8",
                                                                "--config.model.num_layers=3",
                                                                "--config.model.hidden_size=64"]))
  mesh = make_mesh("fsdp=8")
  compiled = plan_training(make_task("lalrm", config), config, mesh)
  extrapolated = plan_extrapolated(lambda c: make_task("lalrm", c), config, mesh, DEPTH_KEYS["lalrm"], (1, 2))
  assert extrapolated.method.startswith("extrapolated to 3 blocks")
  assert extrapolated.num_trainable == compiled.num_trainable
  for field in ("argument_bytes", "temp_bytes", "flops"):
    assert abs(getattr(extrapolated, field) / getattr(compiled, field) - 1) < 0.02, field
