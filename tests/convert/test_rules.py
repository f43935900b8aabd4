"""Rule tables and convert_state: layouts against torch's own layers, the toy model converted end to end
(fp32, bf16, to bf16), and one ConversionError listing every offender."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import nnx

from tests.helpers import convert_toy as toy
from wonderland_jax.checkpoints import abstract_model
from wonderland_jax.convert import ConversionError, Rule, convert_state, open_source
from wonderland_jax.convert.rules import apply_layout, layout_shape, parse_path
from wonderland_jax.errors import WonderlandError


def test_rule_targets_index_lists():
  rule = Rule(r"(.*)\.weight", r"\1.kernel", "conv3d")
  match = rule.match("encoder.down_blocks.0.conv.weight")
  assert rule.target_path(match) == ("encoder", "down_blocks", 0, "conv", "kernel")
  assert rule.match("encoder.down_blocks.0.conv.weight_g") is None, "patterns match the whole key"
  assert parse_path("blocks.12.norm.scale") == ("blocks", 12, "norm", "scale")
  with pytest.raises(ValueError, match="unknown layout 'conv4d'"):
    Rule("x", "y", "conv4d")


def test_layout_shapes():
  assert layout_shape("identity", (3, 4, 5)) == (3, 4, 5)
  assert layout_shape("linear", (8, 4)) == (4, 8)
  assert layout_shape("conv1d", (8, 4, 3)) == (3, 4, 8)
  assert layout_shape("conv2d", (8, 4, 3, 2)) == (3, 2, 4, 8)
  assert layout_shape("conv3d", (8, 4, 3, 2, 1)) == (3, 2, 1, 4, 8)
  assert layout_shape("conv2d", (8, 4)) is None
  with pytest.raises(ValueError, match="needs a 5-d array"):
    apply_layout("conv3d", np.zeros((2, 3)))


@pytest.mark.parametrize("layout, torch_layer, kernel_size", [
  ("linear", torch.nn.Linear(5, 7), None),
  ("conv1d", torch.nn.Conv1d(3, 4, 3), (3,)),
  ("conv2d", torch.nn.Conv2d(3, 4, (3, 2)), (3, 2)),
  ("conv3d", torch.nn.Conv3d(3, 4, (2, 3, 2)), (2, 3, 2)),
])
def test_layouts_match_torch_layers(layout, torch_layer, kernel_size):
  rngs = nnx.Rngs(0)
  weight = torch_layer.weight.detach().numpy()
  if layout == "linear":
    layer = nnx.Linear(5, 7, rngs=rngs)
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    channels_last = x
  else:
    layer = nnx.Conv(3, 4, kernel_size, padding="VALID", rngs=rngs)
    x = np.random.default_rng(0).normal(size=(2, 3) + (6,) * len(kernel_size)).astype(np.float32)
    channels_last = np.moveaxis(x, 1, -1)
  layer.kernel[...] = apply_layout(layout, weight)
  layer.bias[...] = torch_layer.bias.detach().numpy()
  with torch.no_grad():
    expected = torch_layer(torch.from_numpy(x)).numpy()
  got = np.asarray(layer(channels_last))
  if layout != "linear":
    got = np.moveaxis(got, -1, 1)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def convert_toy(folder, config=None, **kwargs):
  source = open_source(folder)
  abstract = abstract_model(toy.build, config or toy.config_from_source(source.config))
  return abstract, *convert_state(source, toy.RULES, abstract, **kwargs)


def test_toy_model_converted_matches_torch(tmp_path):
  model = toy.torch_model()
  folder = toy.write_model_folder(tmp_path / "toy", model.state_dict())
  abstract, state, report = convert_toy(folder)
  graphdef, _ = nnx.split(abstract)
  converted = nnx.merge(graphdef, state)
  assert isinstance(converted.down_blocks[1].conv2.kernel, nnx.Param)
  assert converted.down_blocks[1].conv2.kernel.shape == (1, 3, 3, 8, 8)
  x = toy.torch_input()
  np.testing.assert_allclose(np.asarray(converted(toy.nnx_input(x))), toy.torch_output(model, x), atol=1e-5)
  assert report.num_params == sum(p.numel() for p in model.parameters())
  assert report.num_tensors == len(model.state_dict())
  assert report.source_dtypes == ("F32",) and report.dtype == "float32"
  assert report.max_rounding_error == 0.0
  assert report.elapsed_s >= 0.0 and report.source == str(folder)


def test_bf16_source_is_upcast_exactly(tmp_path):
  model = toy.torch_model()
  bf16 = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
  folder = toy.write_model_folder(tmp_path / "toy", bf16)
  _, state, report = convert_toy(folder)
  assert report.source_dtypes == ("BF16",) and report.max_rounding_error == 0.0
  kernel = state["proj_out"]["kernel"].get_value()
  assert kernel.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(kernel), bf16["proj_out.weight"].float().numpy().T)


def test_fp32_to_bf16_reports_the_rounding_error(tmp_path):
  model = toy.torch_model()
  folder = toy.write_model_folder(tmp_path / "toy", model.state_dict())
  _, state, report = convert_toy(folder, dtype=jnp.bfloat16)
  assert report.dtype == "bfloat16"
  assert state["conv_in"]["kernel"].get_value().dtype == jnp.bfloat16
  expected = max(float(np.abs(v.numpy().astype(ml_dtypes.bfloat16).astype(np.float32) - v.numpy()).max())
                 for v in model.state_dict().values())
  assert report.max_rounding_error == pytest.approx(expected, rel=1e-6)
  assert 0.0 < report.max_rounding_error < 0.01


def test_every_offender_is_listed_at_once(tmp_path):
  state = dict(toy.torch_model().state_dict())
  state.pop("down_blocks.1.conv2.weight")                    # a model param left unfilled
  state["extra.running_mean"] = torch.zeros(3)               # matched by no rule
  state["ghost.bias"] = torch.zeros(3)                       # a target outside the model
  state["alias.proj_out.bias"] = torch.zeros(4)              # fills proj_out.bias a second time
  state["conv_2d.weight"] = torch.zeros(6, 8)                # wrong rank for conv2d
  folder = toy.write_model_folder(tmp_path / "toy", state)
  config = dict(toy.config_from_source(toy.SOURCE_CONFIG), out_features=4)  # proj_out shapes mismatch
  source = open_source(folder)
  source.read_raw = None  # Nothing may be read before the mapping checked out.
  rules = [Rule(r"alias\.(.*)", r"\1")] + toy.RULES  # first match wins
  with pytest.raises(ConversionError) as err:
    convert_state(source, rules, abstract_model(toy.build, config))
  message = str(err.value)
  assert isinstance(err.value, WonderlandError)
  assert str(folder) in message
  assert "1 source key(s) matched by no rule:\n    extra.running_mean" in message
  assert "1 target(s) not an nnx.Param of the model:\n    ghost.bias (from ghost.bias)" in message
  assert "1 model param(s) not filled:\n    down_blocks.1.conv2.kernel (1, 3, 3, 8, 8)" in message
  assert "proj_out.bias from alias.proj_out.bias, proj_out.bias" in message
  assert "3 shape mismatch(es)" in message
  assert "conv_2d.weight -> conv_2d.kernel: source (6, 8), wrong rank for layout conv2d, expected (3, 3, 8, 6)" \
    in message
  assert "proj_out.weight -> proj_out.kernel: source (5, 6), after linear (6, 5), expected (6, 4)" in message
  assert "proj_out.bias -> proj_out.bias: source (5,), after identity (5,), expected (4,)" in message
  assert err.value.unmatched == ["extra.running_mean"]
  assert err.value.unfilled == [("down_blocks", 1, "conv2", "kernel")]


def test_long_lists_are_capped(tmp_path):
  state = dict(toy.torch_model().state_dict())
  state.update({f"junk.{i:02d}": torch.zeros(1) for i in range(30)})
  folder = toy.write_model_folder(tmp_path / "toy", state)
  with pytest.raises(ConversionError) as err:
    convert_toy(folder)
  message = str(err.value)
  assert "30 source key(s) matched by no rule" in message
  assert "junk.19" in message and "junk.20" not in message and "... and 10 more" in message


def test_ignored_keys(tmp_path):
  state = dict(toy.torch_model().state_dict())
  state["norm_out.num_batches_tracked"] = torch.tensor(0)
  folder = toy.write_model_folder(tmp_path / "toy", state)
  source = open_source(folder)
  abstract = abstract_model(toy.build, toy.config_from_source(source.config))
  with pytest.raises(ConversionError, match="norm_out.num_batches_tracked"):
    convert_state(source, toy.RULES, abstract)
  _, report = convert_state(source, [Rule(r".*num_batches_tracked", None)] + toy.RULES, abstract)
  assert report.ignored == ("norm_out.num_batches_tracked",)
