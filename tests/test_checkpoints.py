"""Checkpoints: save / load round trips, atomic writes, sharded loading onto the 8-device CPU mesh, and the
errors of missing or mismatched checkpoints."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from tests.helpers import convert_toy as toy
from wonderland_jax import checkpoints
from wonderland_jax.camera import DEFAULT_SCALE_FLOOR
from wonderland_jax.errors import InputFileError, OutputError, WonderlandError
from wonderland_jax.train.config import load_config, pose_normalization, step_pose_normalization

TOY_CONFIG = toy.config_from_source(toy.SOURCE_CONFIG)
checkpoints.register_model("toy_test", toy.build)


class Sharded(nnx.Module):
  """An MLP whose first layer carries logical axis names; the second has none."""

  def __init__(self, config, *, rngs):
    width, hidden = config["width"], config["hidden"]
    self.up = nnx.Linear(width, hidden, rngs=rngs,
                         kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp")),
                         bias_init=nnx.with_partitioning(nnx.initializers.normal(), ("mlp",)))
    self.down = nnx.Linear(hidden, width, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.down(nnx.relu(self.up(x)))


checkpoints.register_model("sharded_test", lambda config, rngs: Sharded(config, rngs=rngs))


def params_of(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(tmp_path):
  model = toy.build(TOY_CONFIG, nnx.Rngs(3))
  out = tmp_path / "ckpt"
  assert checkpoints.save(out, model, kind="toy_test", config=TOY_CONFIG, metadata={"note": "hi"}) == out
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "no staging directory left behind"
  description = json.loads((out / "wonderland_model.json").read_text())
  assert description == {"format": 1, "kind": "toy_test", "config": TOY_CONFIG, "metadata": {"note": "hi"}}
  loaded = checkpoints.load(out)
  assert isinstance(loaded, toy.Toy)
  assert_trees_equal(params_of(loaded), params_of(model))
  assert loaded.conv_in.kernel.get_value().devices() == {jax.devices()[0]}
  x = np.random.default_rng(0).normal(size=(1, 2, 4, 4, 3)).astype(np.float32)
  np.testing.assert_array_equal(loaded(x), model(x))
  kind, config, params = checkpoints.load_params(out)
  assert (kind, config) == ("toy_test", TOY_CONFIG)
  assert_trees_equal(params, params_of(model))  # nnx.List indices come back as ints


def test_bfloat16_params_keep_their_dtype(tmp_path):
  model = toy.build(TOY_CONFIG, nnx.Rngs(0))
  params = jax.tree.map(lambda v: v.astype(jnp.bfloat16), params_of(model))
  checkpoints.save(tmp_path / "ckpt", params, kind="toy_test", config=TOY_CONFIG)
  loaded = checkpoints.load(tmp_path / "ckpt")
  assert loaded.proj_out.kernel.get_value().dtype == jnp.bfloat16
  assert_trees_equal(params_of(loaded), params)


def test_existing_directory_and_overwrite(tmp_path):
  first, second = (toy.build(TOY_CONFIG, nnx.Rngs(seed)) for seed in (1, 2))
  out = tmp_path / "ckpt"
  checkpoints.save(out, first, kind="toy_test", config=TOY_CONFIG)
  with pytest.raises(WonderlandError, match="ckpt: already exists; pass overwrite"):
    checkpoints.save(out, second, kind="toy_test", config=TOY_CONFIG)
  assert_trees_equal(params_of(checkpoints.load(out)), params_of(first))
  checkpoints.save(out, second, kind="toy_test", config=TOY_CONFIG, overwrite=True)
  assert_trees_equal(params_of(checkpoints.load(out)), params_of(second))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
  precious = tmp_path / "precious"
  precious.mkdir()
  (precious / "thesis.tex").write_text("...")
  with pytest.raises(WonderlandError, match="precious: exists and is not a wonderland checkpoint"):
    checkpoints.save(precious, second, kind="toy_test", config=TOY_CONFIG, overwrite=True)
  assert (precious / "thesis.tex").exists()


class FailingCheckpointer:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def save(self, path, tree):
    path.mkdir()
    (path / "partial").write_text("half")
    raise OSError("disk full")


def test_a_failed_save_leaves_nothing_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
  model = toy.build(TOY_CONFIG, nnx.Rngs(0))
  checkpoints.save(tmp_path / "old", model, kind="toy_test", config=TOY_CONFIG)
  monkeypatch.setattr(checkpoints.ocp, "StandardCheckpointer", FailingCheckpointer)
  with pytest.raises(OutputError, match="disk full"):
    checkpoints.save(tmp_path / "new", model, kind="toy_test", config=TOY_CONFIG)
  with pytest.raises(OutputError, match="disk full"):
    checkpoints.save(tmp_path / "old", toy.build(TOY_CONFIG, nnx.Rngs(1)), kind="toy_test", config=TOY_CONFIG,
                     overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
  monkeypatch.undo()
  assert_trees_equal(params_of(checkpoints.load(tmp_path / "old")), params_of(model))
  with pytest.raises(WonderlandError, match="not JSON-serialisable"):
    checkpoints.save(tmp_path / "new", model, kind="toy_test", config={"bad": object()})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_load_onto_a_mesh_by_logical_axis_rules(tmp_path):
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  config = {"width": 8, "hidden": 16}
  with nnx.use_eager_sharding(False):
    model = Sharded(config, rngs=nnx.Rngs(0))
  checkpoints.save(tmp_path / "ckpt", model, kind="sharded_test", config=config)
  mesh = jax.make_mesh((2, 4), ("data", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  loaded = checkpoints.load(tmp_path / "ckpt", mesh=mesh, rules=[("embed", None), ("mlp", "tensor")])
  kernel, bias = loaded.up.kernel.get_value(), loaded.up.bias.get_value()
  assert kernel.sharding.mesh == mesh and kernel.sharding.spec == PartitionSpec(None, "tensor")
  assert bias.sharding.spec == PartitionSpec("tensor")
  assert kernel.addressable_shards[0].data.shape == (8, 4)
  assert loaded.down.kernel.get_value().sharding.spec == PartitionSpec()
  assert len(loaded.down.kernel.get_value().sharding.device_set) == 8
  assert_trees_equal(params_of(loaded), params_of(model))
  x = np.ones((2, 8), np.float32)
  np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
  assert isinstance(loaded.dropout.rngs.key.get_value(), jax.Array)  # non-Param state rebuilt
  # Without rules everything is replicated.
  replicated = checkpoints.load(tmp_path / "ckpt", mesh=mesh)
  assert replicated.up.kernel.get_value().sharding.spec == PartitionSpec()
  with pytest.raises(WonderlandError, match=r"mesh axes \['model'\] not in the mesh"):
    checkpoints.load(tmp_path / "ckpt", mesh=mesh, rules=[("mlp", "model")])
  with nnx.use_eager_sharding(False):
    checkpoints.save(tmp_path / "odd", Sharded({"width": 8, "hidden": 6}, rngs=nnx.Rngs(0)), kind="sharded_test",
                     config={"width": 8, "hidden": 6})
  with pytest.raises(WonderlandError, match=r"up.bias of shape \(6,\).*6 is not divisible by 4"):
    checkpoints.load(tmp_path / "odd", mesh=mesh, rules=[("mlp", "tensor")])


def test_instantiate_keeps_non_param_state():
  config = {"width": 4, "hidden": 8}
  with nnx.use_eager_sharding(False):
    model = Sharded(config, rngs=nnx.Rngs(0))
  rebuilt = checkpoints.instantiate("sharded_test", config, nnx.state(model, nnx.Param))
  assert_trees_equal(params_of(rebuilt), params_of(model))
  assert rebuilt.dropout.rngs.count.get_value() == 0
  with pytest.raises(WonderlandError, match="1 missing: down.bias"):
    params = params_of(model)
    del params["down"]["bias"]
    checkpoints.instantiate("sharded_test", config, params)


def test_load_errors(tmp_path):
  with pytest.raises(InputFileError, match="nowhere: checkpoint directory not found"):
    checkpoints.load(tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputFileError, match="wonderland_model.json: not found"):
    checkpoints.load(tmp_path / "empty")
  out = tmp_path / "ckpt"
  checkpoints.save(out, toy.build(TOY_CONFIG, nnx.Rngs(0)), kind="toy_test", config=TOY_CONFIG)
  description = json.loads((out / "wonderland_model.json").read_text())

  def rewrite(**changes):
    (out / "wonderland_model.json").write_text(json.dumps(dict(description, **changes)))

  rewrite(kind="teapot")
  with pytest.raises(WonderlandError, match="unknown model kind 'teapot'; known kinds: .*toy_test"):
    checkpoints.load(out)
  rewrite(format=7)
  with pytest.raises(InputFileError, match="unsupported checkpoint format 7"):
    checkpoints.load(out)
  rewrite(config=dict(TOY_CONFIG, out_features=4, layers=3))
  with pytest.raises(InputFileError) as err:
    checkpoints.load(out)
  message = str(err.value)
  assert "params do not fit the 'toy_test' model" in message
  assert "model param(s) missing from the checkpoint: down_blocks.2.conv1.bias (8,)" in message
  assert "proj_out.kernel: stored (6, 5), model (6, 4)" in message
  rewrite()
  (out / "wonderland_model.json").write_text("{")
  with pytest.raises(InputFileError, match="wonderland_model.json: cannot read"):
    checkpoints.load(out)
  rewrite()
  shutil.rmtree(out / "params")
  with pytest.raises(InputFileError, match="params: params checkpoint not found"):
    checkpoints.load(out)


def test_known_kind_whose_module_is_missing(monkeypatch):
  monkeypatch.setitem(checkpoints.KNOWN_KINDS, "ghost_kind", "wonderland_jax.models.ghost_model")
  with pytest.raises(WonderlandError, match="'ghost_kind' needs wonderland_jax.models.ghost_model, which is not "
                                            "available.*known kinds: .*ghost_kind"):
    checkpoints.model_builder("ghost_kind")


def test_relative_paths(tmp_path, monkeypatch):
  """Orbax takes absolute paths only; `save` / `load` accept relative ones (a CLI's `--out runs/x`)."""
  monkeypatch.chdir(tmp_path)
  params = {"layer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  checkpoints.save("runs/relative", params, kind="toy", config={})
  kind, _, loaded = checkpoints.load_params("runs/relative")
  assert kind == "toy"
  np.testing.assert_array_equal(loaded["layer"]["kernel"], params["layer"]["kernel"])


def test_pose_normalization_round_trip(tmp_path):
  """A training config's pose normalisation (mode, target, floor) -> the export's metadata -> what inference
  reads back; exports and configs from before the floor read back with the old behaviour."""
  params = {"layer": {"kernel": np.zeros((2, 3), np.float32)}}
  config = load_config("lalrm_tiny", ["--config.data.scale_mode=extent_floor", "--config.data.scale_floor=0.25",
                                      "--config.data.scale_target=2.0"])
  settings = pose_normalization(config)
  assert settings == {"scale_mode": "extent_floor", "scale_target": 2.0, "scale_floor": 0.25}
  assert step_pose_normalization(config) == settings | {"scale_floor": 2.0}  # the clips arrive normalised
  metadata = {"trained_with": config.to_dict(), checkpoints.POSE_NORMALIZATION: settings}
  checkpoints.save(tmp_path / "new", params, kind="toy", config={}, metadata=metadata)
  assert checkpoints.pose_normalization(tmp_path / "new") == ("extent_floor", 2.0, 0.25)
  # The default config: max_distance (the floor recorded, unread).
  default = load_config("lalrm_tiny")
  assert default.data.scale_floor == DEFAULT_SCALE_FLOOR
  assert pose_normalization(default) == {"scale_mode": "max_distance", "scale_target": 1.0,
                                         "scale_floor": DEFAULT_SCALE_FLOOR}
  assert step_pose_normalization(default) == pose_normalization(default)
  # A config from before the floor: the old settings and the default floor.
  old_config = ml_collections.ConfigDict({"data": {"scale_mode": "path_length", "scale_target": 3.0}})
  assert pose_normalization(old_config) == {"scale_mode": "path_length", "scale_target": 3.0,
                                            "scale_floor": DEFAULT_SCALE_FLOOR}
  # Exports from before the floor: `pose_normalization` without it, or only `trained_with.data`, or nothing.
  old_exports = {"old": {checkpoints.POSE_NORMALIZATION: {"scale_mode": "max_distance", "scale_target": 1.0}},
                 "older": {"trained_with": {"data": {"scale_mode": "path_length", "scale_target": 2.0}}},
                 "oldest": None}
  for name, old_metadata in old_exports.items():
    checkpoints.save(tmp_path / name, params, kind="toy", config={}, metadata=old_metadata)
  assert checkpoints.pose_normalization(tmp_path / "old") == ("max_distance", 1.0, DEFAULT_SCALE_FLOOR)
  assert checkpoints.pose_normalization(tmp_path / "older") == ("path_length", 2.0, DEFAULT_SCALE_FLOOR)
  assert checkpoints.pose_normalization(tmp_path / "oldest") == ("max_distance", 1.0, DEFAULT_SCALE_FLOOR)
  weights = Path(checkpoints.__file__).parent / "demo" / "weights"  # exported before the floor existed
  for model in ("lalrm", "branch"):
    assert checkpoints.pose_normalization(weights / model) == ("max_distance", 1.0, DEFAULT_SCALE_FLOOR)
