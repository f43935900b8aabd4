"""The CogVideoX VAE against diffusers' AutoencoderKLCogVideoX: tiny random models saved by diffusers,
converted by `wonderland convert vae`, loaded with `checkpoints.load`; encode / decode / tiled paths match."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLCogVideoX
from flax import nnx

from tests.helpers.reference_models import randomize_norms, save_reference
from wonderland_jax import checkpoints
from wonderland_jax.cli import main
from wonderland_jax.convert import ConversionError, convert
from wonderland_jax.errors import WonderlandError
from wonderland_jax.models.vae import CogVideoXVAE, Tiling, VAEConfig, frame_chunks

CONFIGS = {
    # 4 levels: 8x space, 4x time (the published layout), one resnet per block.
    "four_levels": dict(block_out_channels=(16, 32, 32, 32), latent_channels=4, layers_per_block=1,
                        norm_num_groups=4, sample_height=32, sample_width=48),
    # 3 levels with 2 resnets per block and a channel change in every block (conv shortcuts).
    "three_levels": dict(block_out_channels=(8, 16, 24), latent_channels=8, layers_per_block=2,
                         norm_num_groups=4, down_block_types=("CogVideoXDownBlock3D",) * 3,
                         up_block_types=("CogVideoXUpBlock3D",) * 3, sample_height=32, sample_width=32),
    # 2x time compression and the optional quant / post-quant convolutions.
    "quant_convs": dict(block_out_channels=(8, 16), latent_channels=3, layers_per_block=1, norm_num_groups=2,
                        down_block_types=("CogVideoXDownBlock3D",) * 2, up_block_types=("CogVideoXUpBlock3D",) * 2,
                        temporal_compression_ratio=2, use_quant_conv=True, use_post_quant_conv=True,
                        sample_height=16, sample_width=16),
}


def _reference(name: str, seed: int = 0) -> AutoencoderKLCogVideoX:
  torch.manual_seed(seed)
  return randomize_norms(AutoencoderKLCogVideoX(**CONFIGS[name]).eval(), 0.1)


def _save(model, directory, *, bf16=False, sharded=False):
  return save_reference(model, directory, bf16=bf16, sharded=sharded)


def _converted(tmp_path, name, **save_kwargs):
  reference = _reference(name)
  root = tmp_path / "pipeline"
  _save(reference, root / "vae", **save_kwargs)
  if save_kwargs.get("bf16"):  # the reference sees the same (rounded) weights as the converter
    reference = AutoencoderKLCogVideoX.from_pretrained(root / "vae", torch_dtype=torch.float32).eval()
  convert("vae", root, tmp_path / "converted")
  return reference, checkpoints.load(tmp_path / "converted")


def _to_torch(x):
  return torch.from_numpy(np.moveaxis(np.asarray(x), -1, 1).copy())


def _to_jax(x):
  return jnp.asarray(np.moveaxis(x.detach().numpy(), 1, -1))


def _assert_close(ours, reference, name):
  reference = np.moveaxis(reference.detach().numpy(), 1, -1)
  assert ours.shape == reference.shape, name
  error = np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max()
  assert error <= 1e-4, f"{name}: max error {error:.2e} relative to the reference's magnitude"


@pytest.mark.parametrize("name,frames,save_kwargs", [
    ("four_levels", (1, 5, 9, 13, 17), {}),
    ("three_levels", (5, 9), dict(sharded=True)),
    ("quant_convs", (1, 9, 13), dict(bf16=True)),
    ("four_levels", (13,), dict(bf16=True, sharded=True)),
])
def test_encode_decode_match_diffusers(tmp_path, name, frames, save_kwargs):
  reference, ours = _converted(tmp_path, name, **save_kwargs)
  assert isinstance(ours, CogVideoXVAE)
  config = CONFIGS[name]
  rng = np.random.default_rng(0)
  for num_frames in frames:
    video = rng.uniform(-1, 1, (1, num_frames, config["sample_height"], config["sample_width"], 3))
    video = video.astype(np.float32)
    with torch.no_grad():
      posterior = reference.encode(_to_torch(video)).latent_dist
      decoded = reference.decode(posterior.mean).sample
    ours_posterior = ours.encode(jnp.asarray(video))
    _assert_close(ours_posterior.mean, posterior.mean, f"{name} T={num_frames} mean")
    _assert_close(ours_posterior.logvar, posterior.logvar, f"{name} T={num_frames} logvar")
    _assert_close(ours.decode(_to_jax(posterior.mean)), decoded, f"{name} T={num_frames} decode")


def test_tiled_paths_match_diffusers_tiling(tmp_path):
  reference, ours = _converted(tmp_path, "four_levels")
  reference.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=40)
  tiling = Tiling(32, 40)
  rng = np.random.default_rng(1)
  video = rng.uniform(-1, 1, (1, 5, 48, 64, 3)).astype(np.float32)
  latents = rng.normal(size=(1, 2, 6, 8, 4)).astype(np.float32)
  with torch.no_grad():
    encoded = reference.encode(_to_torch(video)).latent_dist.mean
    decoded = reference.decode(_to_torch(latents)).sample
  _assert_close(ours.encode(jnp.asarray(video), tiled=True, tiling=tiling).mean, encoded, "tiled encode")
  _assert_close(ours.decode(jnp.asarray(latents), tiled=True, tiling=tiling), decoded, "tiled decode")
  # Tiling is a no-op below the tile size, and untiled results differ from tiled ones above it.
  untiled = ours.encode(jnp.asarray(video)).mean
  assert float(jnp.abs(untiled - ours.encode(jnp.asarray(video), tiled=True, tiling=tiling).mean).max()) > 1e-4


@pytest.fixture(scope="module")
def quant_model():
  return CogVideoXVAE(VAEConfig(**CONFIGS["quant_convs"]), rngs=nnx.Rngs(0))  # ~20 s to build eagerly: once


def test_posterior_sample_and_mode(quant_model):
  model = quant_model
  posterior = model.encode(jnp.zeros((2, 5, 16, 16, 3)))
  assert posterior.mean.shape == (2, 3, 8, 8, 3)
  samples = jax.vmap(posterior.sample)(jax.random.split(jax.random.key(0), 200))
  np.testing.assert_allclose(posterior.mode(), posterior.mean)
  standardized = np.asarray((samples - posterior.mean) / posterior.std).ravel()  # should be N(0, 1)
  assert abs(standardized.mean()) < 0.02 and abs(standardized.std() - 1) < 0.02
  assert not np.allclose(samples[0], samples[1])


def test_chunked_memory_does_not_grow_with_frames():
  model = CogVideoXVAE(VAEConfig(**CONFIGS["four_levels"]), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x).mean)
  decode = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))

  def planned(fn, shape):
    memory = fn.lower(state, jax.ShapeDtypeStruct(shape, jnp.float32)).compile().memory_analysis()
    return memory.temp_size_in_bytes, memory.output_size_in_bytes

  for fn, shape_of in ((encode, lambda t: (1, t, 32, 32, 3)), (decode, lambda t: (1, 1 + (t - 1) // 4, 4, 4, 4))):
    temp_short, out_short = planned(fn, shape_of(33))
    temp_long, out_long = planned(fn, shape_of(97))
    assert temp_long <= 1.1 * temp_short + 2 * (out_long - out_short), (temp_short, temp_long)


def test_frame_chunks_follow_diffusers():
  assert frame_chunks(49, 8) == (9, 5)
  assert frame_chunks(13, 8) == (13, 0)
  assert frame_chunks(17, 8) == (9, 1)
  assert frame_chunks(13, 2) == (3, 5)
  assert frame_chunks(1, 2) == (1, 0)


def test_config_from_published_json_fields():
  published = {"_class_name": "AutoencoderKLCogVideoX", "_diffusers_version": "0.31.0", "act_fn": "silu",
               "block_out_channels": [128, 256, 256, 512], "down_block_types": ["CogVideoXDownBlock3D"] * 4,
               "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None,
               "latents_std": None, "layers_per_block": 3, "norm_eps": 1e-06, "norm_num_groups": 32,
               "out_channels": 3, "sample_height": 480, "sample_width": 720, "scaling_factor": 0.7,
               "shift_factor": None, "temporal_compression_ratio": 4, "up_block_types": ["CogVideoXUpBlock3D"] * 4,
               "use_post_quant_conv": False, "use_quant_conv": False, "invert_scale_latents": True}
  config = VAEConfig.from_diffusers(published)
  assert config.scaling_factor == 0.7 and config.spatial_compression == 8 and config.invert_scale_latents
  abstract = nnx.eval_shape(lambda: CogVideoXVAE(config, rngs=nnx.Rngs(0)))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  with torch.device("meta"):
    reference = AutoencoderKLCogVideoX(**{k: v for k, v in published.items() if not k.startswith("_")})
  assert num_params == sum(p.numel() for p in reference.parameters()) == 215_583_907
  with pytest.raises(WonderlandError, match="unknown field"):
    VAEConfig.from_diffusers({**published, "mystery": 1})


def test_cli_convert_and_errors(tmp_path, capsys):
  root = tmp_path / "pipeline"
  _save(_reference("quant_convs"), root / "vae")
  out = tmp_path / "out"
  assert main(["convert", "vae", "--src", str(root), "--out", str(out)]) == 0
  description = json.loads((out / "wonderland_model.json").read_text())
  assert description["kind"] == "cogvideox_vae"
  assert main(["convert", "vae", "--src", str(root), "--out", str(out)]) == 2
  assert "exists" in capsys.readouterr().err
  # A config that does not match the weights: one error naming the offending keys and shapes.
  config_path = root / "vae" / "config.json"
  config = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**config, "block_out_channels": [8, 24]}))
  bad_out = tmp_path / "bad"
  with pytest.raises(ConversionError) as error:
    convert("vae", root, bad_out)
  assert "expected" in str(error.value) and "conv" in str(error.value)
  assert main(["convert", "vae", "--src", str(root), "--out", str(bad_out)]) == 2
  assert not bad_out.exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary directories left behind"


def test_python_frame_loop_gives_the_scan_results_and_gradients(quant_model):
  """The training steps' frame loop (`python_frame_loop`) is the same computation as the default chunk scan."""
  from wonderland_jax.models.vae import python_frame_loop  # noqa: PLC0415
  model = quant_model
  latents = jax.random.normal(jax.random.key(1), (1, 4, 4, 4, 3))  # decoder chunks: 2, then one more of 2
  assert frame_chunks(4, 2) == (2, 1)

  def loss(vae):
    return jnp.mean(vae.decode(latents) ** 2)

  def loss_loop(vae):
    with python_frame_loop():
      return loss(vae)

  value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
  value_loop, grads_loop = nnx.jit(nnx.value_and_grad(loss_loop))(model)
  np.testing.assert_allclose(value_loop, value, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_loop), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
