"""`wonderland train camera-dit` on tiny overrides of configs/camera_dit_tiny.py: the held-out loss falls, a
resumed run ends exactly where an uninterrupted one does, the checkpoint holds only branch params and their
optimizer state, the export loads with `camera_dit.load`; training from a converted pipeline caches the text
embeddings; the objective is the v-prediction target."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.cli import main
from wonderland_jax.diffusion import sampling
from wonderland_jax.diffusion.sampling import encode_image
from wonderland_jax.diffusion.schedulers import add_noise, get_velocity, make_tables
from wonderland_jax.errors import InputFileError
from wonderland_jax.models import camera_dit
from wonderland_jax.train import camera_dit as trainer
from wonderland_jax.train.config import load_config

TINY = ["--config.base.random_config.num_layers=2", "--config.camera.controlnet_layers=1",
        "--config.camera.encoder_channels=8", "--config.train.batch_size=2", "--config.train.log_every=2",
        "--config.data.num_eval_scenes=2"]


def _train(workdir, steps, *extra):
  return main(["train", "camera-dit", "--config", "camera_dit_tiny", "--workdir", str(workdir),
               f"--config.train.steps={steps}", *TINY, *extra])


def _eval_records(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [record for record in map(json.loads, lines) if "eval/v_mse" in record]


def _branch(directory):
  return jax.tree.map(np.asarray, camera_dit.branch_params(camera_dit.load(directory.parent / "base_transformer",
                                                                           directory)))


def test_trains_resumes_and_exports(tmp_path):
  config = load_config("camera_dit_tiny", ["--config.train.steps=30", *TINY])
  initial = trainer.evaluate_loss(trainer.CameraDiTTrainee(config, nnx.Rngs(0)), _held_out(config), config,
                                  make_tables(trainer.scheduler_config(config)))
  straight = tmp_path / "straight"
  assert _train(straight, 30, "--config.train.eval_every=30", "--config.train.checkpoint_every=15") == 0
  final = _eval_records(straight)[-1]
  assert final["step"] == 30
  assert final["eval/v_mse"] < 0.8 * initial["v_mse"], (initial, final)
  # The checkpoint holds the branch params and Adam's two moments for them: nothing of the frozen base.
  state = ocp.StandardCheckpointer().restore((straight / "checkpoints" / "30" / "state").absolute())
  num_params = sum(np.size(x) for x in jax.tree.leaves(state["params"]))
  num_moments = sum(np.size(x) for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) > 0)
  assert num_moments == 2 * num_params
  base_params = [key for key in _flat_keys(state["params"]) if key.startswith("dit/base/")]
  assert base_params and all("/lora/" in key for key in base_params)
  exported = _branch(straight / "model")
  assert {key.split("/")[0] for key in _flat_keys(exported)} == {"base", "control_blocks", "control_encoder",
                                                                 "control_out", "lora_encoder", "lora_proj"}
  # Resume: the run restarted from its step-15 checkpoint ends with the same branch params.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "30")
  shutil.rmtree(resumed / "model")
  assert _train(resumed, 30, "--config.train.eval_every=0", "--config.train.checkpoint_every=15") == 0
  jax.tree.map(np.testing.assert_array_equal, _branch(resumed / "model"), exported)


def _held_out(config):
  from wonderland_jax.data import pipeline  # noqa: PLC0415
  clips = pipeline.eval_clips(config)
  return {key: np.stack([clip[key] for clip in clips]) for key in ("frames", "viewmats", "intrinsics")}


def _flat_keys(tree):
  return ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_trains_from_a_converted_pipeline_and_caches_the_text_embeddings(tmp_path, converted):
  cache = tmp_path / "text.npz"
  args = ["--config.base.pipeline=" + str(converted), "--config.base.random_config={}",
          "--config.camera.spatial_compression=4", "--config.camera.controlnet_layers=1",
          "--config.camera.lora_rank=2", "--config.camera.encoder_channels=8", "--config.train.batch_size=1",
          "--config.train.eval_every=0", f"--config.text.embeddings={cache}", "--config.text.prompt=a castle at dusk"]
  assert main(["train", "camera-dit", "--config", "camera_dit_tiny", "--workdir", str(tmp_path / "run"),
               "--config.train.steps=2", *args]) == 0
  with np.load(cache) as stored:
    prompt, empty = stored["prompt"], stored["empty"]
  assert prompt.shape == (8, 16) and np.abs(prompt - empty).max() > 1e-3
  assert not (tmp_path / "run" / "base_transformer").exists()  # the base is the pipeline's
  model = camera_dit.load(converted / "transformer", tmp_path / "run" / "model")
  assert model.camera.controlnet_layers == 1
  # The cache is what the next run reads (an unreadable one is reported by name).
  config = load_config("camera_dit_tiny", args)
  np.testing.assert_array_equal(trainer.text_embeddings(config, model.config)[0], prompt)
  np.savez(cache, prompt=np.zeros((3, 16)), empty=np.zeros((3, 16)))
  with pytest.raises(InputFileError, match=r"text.npz: embeddings of shape \(3, 16\)"):
    trainer.text_embeddings(config, model.config)


def test_trainable_base_trains_and_is_exported_next_to_the_branch(tmp_path, converted):
  args = ["--config.base.pipeline=" + str(converted), "--config.base.random_config={}",
          "--config.base.trainable=True", "--config.camera.spatial_compression=4",
          "--config.camera.controlnet_layers=1", "--config.camera.lora_rank=2", "--config.camera.encoder_channels=8",
          "--config.train.batch_size=1", "--config.train.eval_every=0", "--config.train.checkpoint_every=3"]
  run = tmp_path / "run"
  assert main(["train", "camera-dit", "--config", "camera_dit_tiny", "--workdir", str(run),
               "--config.train.steps=3", *args]) == 0
  # Every param of the camera DiT trains: the checkpoint holds the base's own weights (with Adam moments).
  state = ocp.StandardCheckpointer().restore((run / "checkpoints" / "3" / "state").absolute())
  keys = _flat_keys(state["params"])
  assert any(key.startswith("dit/base/") and "/lora/" not in key for key in keys)
  assert not any(key.startswith("vae/") for key in keys)
  # The trained base is written next to the branch although it came from the pipeline, and it has moved.
  kind, _, _ = checkpoints.read_description(run / "base_transformer")
  assert kind == "cogvideox_transformer"
  original, trained = checkpoints.load(converted / "transformer"), checkpoints.load(run / "base_transformer")
  before = original.transformer_blocks[0].attn1.to_q.kernel[...]
  after = trained.transformer_blocks[0].attn1.to_q.kernel[...]
  assert before.shape == after.shape and not np.array_equal(before, after)
  model = camera_dit.load(run / "base_transformer", run / "model")
  np.testing.assert_array_equal(model.base.transformer_blocks[0].attn1.to_q.kernel[...], after)


def test_objective_is_the_v_prediction_target():
  config = load_config("camera_dit_tiny", TINY)
  tables = make_tables(trainer.scheduler_config(config))
  assert tables.prediction_type == "v_prediction" and float(tables.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
  model = trainer.CameraDiTTrainee(config, nnx.Rngs(0))
  batch = {key: jnp.asarray(value[:2]) for key, value in _held_out(config).items()}
  key = jax.random.key(3)
  model_input, text, timesteps, plucker, target = trainer.diffusion_inputs(model, batch, key, tables=tables,
                                                                           config=config)
  assert model_input.shape == (2, 3, 4, 4, 32) and plucker.shape == (2, 9, 32, 32, 6)
  noisy = model_input[..., :16]
  # x_t and v are consistent: x0 = sqrt(abar) x_t - sqrt(1 - abar) v, eps = sqrt(1 - abar) x_t + sqrt(abar) v.
  abar = tables.alphas_cumprod[timesteps][:, None, None, None, None]
  x0 = jnp.sqrt(abar) * noisy - jnp.sqrt(1 - abar) * target
  eps = jnp.sqrt(1 - abar) * noisy + jnp.sqrt(abar) * target
  np.testing.assert_allclose(add_noise(tables, x0, eps, timesteps), noisy, atol=1e-4)
  np.testing.assert_allclose(get_velocity(tables, x0, eps, timesteps), target, atol=1e-4)
  # The image condition is the (noised) first frame's latents, then zeros.
  condition = model_input[..., 16:]
  assert float(jnp.abs(condition[:, 0]).max()) > 0 and float(jnp.abs(condition[:, 1:]).max()) == 0
  # Issue 17's regression guard: without the noise augmentation the training condition is exactly the one the
  # sampler builds from the same image (`encode_image`: scaled posterior sample, then `_condition`'s zeros), and
  # the augmentation moves it only slightly. A scaling, layout or posterior mismatch between the two fails here.
  clean_config = load_config("camera_dit_tiny", TINY + ["--config.objective.image_noise_mean=-40.0"])
  clean_input = trainer.diffusion_inputs(model, batch, key, tables=tables, config=clean_config)[0]
  posterior_noise = jax.random.normal(jax.random.split(key, 6)[3], (2, 1, 4, 4, 16))
  image_latents = encode_image(model.vae, batch["frames"][:, 0] * 2 - 1, posterior_noise)
  sampled = sampling._condition(image_latents, 3, model.dit.base.config.patch_size_t)
  np.testing.assert_allclose(clean_input[..., 16:], sampled, atol=1e-5)
  shift = float(jnp.sqrt(jnp.mean((condition[:, 0] - sampled[:, 0]) ** 2)))
  assert 0 < shift < 0.25 * float(jnp.sqrt(jnp.mean(sampled[:, 0] ** 2)))
  # bfloat16 frozen base: the base's params are stored in bf16, the branch params stay float32.
  config_bf16 = load_config("camera_dit_tiny", TINY + ["--config.base.param_dtype=bfloat16"])
  bf16 = trainer.CameraDiTTrainee(config_bf16, nnx.Rngs(0))
  assert bf16.dit.base.transformer_blocks[0].attn1.to_q.kernel[...].dtype == jnp.bfloat16
  assert bf16.dit.base.transformer_blocks[0].attn1.to_q.lora.lora_a[...].dtype == jnp.float32
  assert bf16.dit.control_blocks[0].attn1.to_q.kernel[...].dtype == jnp.float32
  loss, _ = trainer.camera_dit_loss(bf16, batch, key, config=config_bf16, tables=tables)
  assert np.isfinite(float(loss))
