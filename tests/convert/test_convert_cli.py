"""`wonderland convert` end to end with a toy converter registered for the test: a diffusers-style pipeline
folder in, a checkpoint out that loads into a model matching the torch original; and its failures, which leave
no output behind."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.helpers import convert_toy as toy
from wonderland_jax import checkpoints, convert
from wonderland_jax.cli import main
from wonderland_jax.errors import WonderlandError

checkpoints.register_model("toy_test", toy.build)


@pytest.fixture
def toy_converter(monkeypatch):
  monkeypatch.setitem(convert.CONVERTERS, "toy", toy.converter())


@pytest.fixture
def pipeline(tmp_path):
  """A pipeline root with the toy model in toy/, and the torch model it came from."""
  model = toy.torch_model()
  toy.write_model_folder(tmp_path / "pipeline" / "toy", model.state_dict())
  (tmp_path / "pipeline" / "model_index.json").write_text("{}")
  return tmp_path / "pipeline", model


def outputs_match(checkpoint, model):
  loaded = checkpoints.load(checkpoint)
  x = toy.torch_input()
  np.testing.assert_allclose(np.asarray(loaded(toy.nnx_input(x))), toy.torch_output(model, x), atol=1e-5)
  return loaded


def test_convert_a_pipeline_folder(tmp_path, toy_converter, pipeline, caplog):
  caplog.set_level(logging.INFO, logger="wonderland_jax")
  root, model = pipeline
  out = tmp_path / "ckpt" / "toy"
  assert main(["convert", "toy", "--src", str(root), "--out", str(out)]) == 0
  outputs_match(out, model)
  kind, config, _ = checkpoints.load_params(out)
  assert kind == "toy_test" and config == toy.config_from_source(toy.SOURCE_CONFIG)
  num_params = sum(p.numel() for p in model.parameters())
  assert f"{num_params} parameters" in caplog.text and "max rounding error 0" in caplog.text
  # The model folder itself works too.
  assert main(["convert", "toy", "--src", str(root / "toy"), "--out", str(tmp_path / "again")]) == 0


def test_convert_sharded_bf16_to_bfloat16(tmp_path, toy_converter):
  model = toy.torch_model()
  state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
  keys = sorted(state)
  toy.write_model_folder(tmp_path / "src", state, shards=[keys[::2], keys[1::2]])
  report = convert.convert("toy", tmp_path / "src", tmp_path / "out", dtype="bfloat16")
  assert report.source_dtypes == ("BF16",) and report.dtype == "bfloat16" and report.max_rounding_error == 0.0
  loaded = checkpoints.load(tmp_path / "out")
  kernel = loaded.proj_out.kernel.get_value()
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(kernel, np.float32), state["proj_out.weight"].float().numpy().T)


def test_existing_out_is_refused_before_reading_anything(tmp_path, toy_converter, pipeline, capsys):
  root, model = pipeline
  out = tmp_path / "out"
  assert main(["convert", "toy", "--src", str(root), "--out", str(out)]) == 0
  capsys.readouterr()
  # --src does not even exist: the --out check comes first.
  assert main(["convert", "toy", "--src", str(tmp_path / "missing"), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "wonderland convert: error:" in err and f"{out}: already exists" in err and "missing" not in err
  assert main(["convert", "toy", "--src", str(root), "--out", str(out), "--overwrite"]) == 0
  outputs_match(out, model)


def test_failures_leave_no_output(tmp_path, toy_converter, pipeline, capsys):
  root, _ = pipeline
  out = tmp_path / "out"
  before = sorted(p.name for p in tmp_path.iterdir())
  # A config that does not fit the weights: the ConversionError from validation, naming the folder.
  config = root / "toy" / "config.json"
  config.write_text(config.read_text().replace('"out_features": 5', '"out_features": 7'))
  assert main(["convert", "toy", "--src", str(root), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert f"{root / 'toy'}: the weights do not fit the model" in err
  assert len(err.strip().splitlines()) == 2 and "more lines with -v" in err  # capped without -v
  assert main(["-v", "convert", "toy", "--src", str(root), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "proj_out.weight -> proj_out.kernel: source (5, 6), after linear (6, 5), expected (6, 7)" in err
  # A config.json missing a field the converter needs.
  config.write_text("{}")
  assert main(["convert", "toy", "--src", str(root), "--out", str(out)]) == 2
  assert "config.json: cannot make a toy config from it: KeyError('in_channels')" in capsys.readouterr().err
  # A truncated weights file.
  toy.write_model_folder(root / "toy", toy.torch_model().state_dict())
  weights = root / "toy" / "diffusion_pytorch_model.safetensors"
  weights.write_bytes(weights.read_bytes()[:-100])
  assert main(["convert", "toy", "--src", str(root), "--out", str(out)]) == 2
  assert "diffusion_pytorch_model.safetensors: truncated" in capsys.readouterr().err
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_model_and_dtype(tmp_path, toy_converter, pipeline, capsys):
  root, _ = pipeline
  with pytest.raises(SystemExit):
    main(["convert", "teapot", "--src", str(root), "--out", str(tmp_path / "out")])
  assert "invalid choice: 'teapot'" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["convert", "toy", "--src", str(root), "--out", str(tmp_path / "out"), "--dtype", "float8"])
  with pytest.raises(WonderlandError, match="unknown model 'teapot' to convert; known: .*toy"):
    convert.convert("teapot", root, tmp_path / "out")
  assert not (tmp_path / "out").exists()
