"""The demo builder's tiny converted pipeline (no training): it loads with `VideoPipeline.load`, its T5 embeds
the empty prompt at the transformer's text width, and it samples a video."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.convert.pipeline import PIPELINE_JSON, read_pipeline
from wonderland_jax.data.scenes import scan_dataset
from wonderland_jax.demo.build import RECIPES, build, write_pipeline, write_scenes
from wonderland_jax.diffusion.pipeline import VideoPipeline
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models.t5 import encode_prompt
from wonderland_jax.models.vae import CogVideoXVAE, VAEConfig
from wonderland_jax.train.config import REPO_CONFIGS, load_config


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
  config = load_config("vae_tiny").model.to_dict()
  vae = CogVideoXVAE(VAEConfig.from_diffusers(config), rngs=nnx.Rngs(0))
  return checkpoints.save(tmp_path_factory.mktemp("vae") / "model", vae, kind="cogvideox_vae",
                          config=vae.config.to_dict())


def test_write_pipeline_loads_as_a_converted_pipeline(tmp_path, vae_dir):
  base = load_config("camera_dit_demo").base
  out = write_pipeline(tmp_path / "pipeline", vae_dir, base.random_config.to_dict(), seed=int(base.seed))
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["transformer", "vae", "text_encoder", "tokenizer", "scheduler", PIPELINE_JSON])
  assert read_pipeline(out)["components"] == ["transformer", "vae", "text_encoder", "tokenizer", "scheduler"]
  pipe = VideoPipeline.load(out)
  assert pipe.default_size == (32, 32) and pipe.scheduler.prediction_type == "v_prediction"
  assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["rescale_betas_zero_snr"] is True
  embeds = encode_prompt(pipe.tokenizer, pipe.text_encoder, ["", "a castle at dusk"], 8)
  assert embeds.shape == (2, 8, 32) and np.all(np.isfinite(embeds))
  assert float(np.abs(embeds[0] - embeds[1]).max()) > 1e-3
  latents, frames = pipe.generate(np.zeros((32, 32, 3)), "", num_frames=9, num_inference_steps=1,
                                  guidance_scale=1.0, key=jax.random.key(0))
  assert latents.shape == (1, 3, 4, 4, 16) and frames.shape == (9, 32, 32, 3)
  # The same build writes the same random weights; an existing directory is not replaced by accident.
  again = write_pipeline(tmp_path / "again", vae_dir, base.random_config.to_dict(), seed=int(base.seed))
  np.testing.assert_array_equal(checkpoints.load(again / "transformer").proj_out.kernel[...],
                                pipe.transformer.proj_out.kernel[...])
  with pytest.raises(WonderlandError, match="already exists"):
    write_pipeline(out, vae_dir, base.random_config.to_dict())
  with pytest.raises(InputFileError, match="not a VAE"):
    write_pipeline(tmp_path / "bad", out / "transformer", base.random_config.to_dict())
  assert not (tmp_path / "bad").exists()


def test_the_data_stage_renders_the_recipes_scenes_once(tmp_path):
  data = load_config(str(REPO_CONFIGS.parent / RECIPES["mini"].vae), ["--config.data.num_eval_scenes=1"]).data
  roots = write_scenes(tmp_path / "data", data, 2)
  assert len(scan_dataset(roots["train"], "realestate10k")) == 2
  assert len(scan_dataset(roots["eval"], "realestate10k")) == 1
  frames = sorted((roots["train"] / "frames").iterdir())[0]
  assert len(list(frames.iterdir())) == data.num_source_frames == 21
  written = (roots["train"] / "poses").stat().st_mtime_ns
  write_scenes(tmp_path / "data", data, 2)  # a rerun keeps what is there
  assert (roots["train"] / "poses").stat().st_mtime_ns == written
  with pytest.raises(WonderlandError, match="--recipe 'huge'"):
    build(tmp_path / "w", tmp_path / "o", recipe="huge")
  with pytest.raises(WonderlandError, match="--train-flag 'train.steps=2': expected a config override"):
    build(tmp_path / "w", tmp_path / "o", train_flags=("train.steps=2",))
  with pytest.raises(WonderlandError, match="--train-scenes: the 'tiny' recipe renders its clips inside"):
    build(tmp_path / "w", tmp_path / "o", recipe="tiny", train_scenes=4)
  assert not (tmp_path / "w").exists() and not (tmp_path / "o").exists()  # refused before anything is written
