"""The tiny models of tests/conftest.py's session fixtures: a converted CogVideoX pipeline, a camera branch on
its transformer and an LaLRM reading its latents."""

import json
import shutil

import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from flax import nnx
from transformers import T5Config, T5EncoderModel

from tests.helpers.dit import perturb
from tests.helpers.reference_models import make_t5_tokenizer
from wonderland_jax import checkpoints
from wonderland_jax.cli import main
from wonderland_jax.models import camera_dit
from wonderland_jax.models.camera_dit import CameraConfig, CameraDiT
from wonderland_jax.models.lalrm import LaLRM, LaLRMConfig

CORPUS = "a castle at dusk\na small red boat on a lake\nthe camera flies over green hills\nsnow on the mountains\n"


def make_converted(tmp_path_factory):
  """A converted tiny CogVideoX pipeline (tests/conftest.py's session fixture `converted`): 4x VAE, 4 latent
  channels, 8x8 latents (32x32 videos), a 1-block transformer, a tiny T5 and a sentencepiece tokenizer."""
  root = tmp_path_factory.mktemp("cogvideox")
  torch.manual_seed(0)
  AutoencoderKLCogVideoX(block_out_channels=(8, 16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                         down_block_types=("CogVideoXDownBlock3D",) * 3, up_block_types=("CogVideoXUpBlock3D",) * 3,
                         scaling_factor=0.7).save_pretrained(root / "vae")  # 4x time, 4x space
  CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4,
                              time_embed_dim=12, text_embed_dim=16, num_layers=1, sample_width=8, sample_height=8,
                              sample_frames=9, max_text_seq_length=8,
                              use_rotary_positional_embeddings=True).save_pretrained(root / "transformer")
  T5EncoderModel(T5Config(vocab_size=160, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4,
                          feed_forward_proj="gated-gelu")).save_pretrained(root / "text_encoder")
  _, tokenizer, _ = make_t5_tokenizer(tmp_path_factory.mktemp("sentencepiece"), CORPUS * 5, vocab_size=30)
  shutil.copytree(tokenizer, root / "tokenizer")  # spiece.model and tokenizer_config.json, as CogVideoX has them
  (root / "scheduler").mkdir()
  (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
      "_class_name": "CogVideoXDPMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
      "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
      "rescale_betas_zero_snr": True, "set_alpha_to_one": True, "snr_shift_scale": 1.0, "steps_offset": 0,
      "timestep_spacing": "trailing"}))
  out = root / "converted"
  assert main(["convert", "cogvideox", "--src", str(root), "--out", str(out)]) == 0
  return out


def make_branch(converted, tmp_path_factory):
  """A camera branch with random weights on the converted pipeline's transformer (4x VAE: rays at 4x)."""
  model = CameraDiT(checkpoints.load(converted / "transformer"),
                    CameraConfig(controlnet_layers=1, lora_rank=2, encoder_channels=4, spatial_compression=4),
                    rngs=nnx.Rngs(0))
  perturb(model, scale=0.2)
  return camera_dit.save_branch(tmp_path_factory.mktemp("branch") / "model", model)


TINY_LALRM = dict(latent_channels=4, spatial_compression=4, temporal_compression=4, patch_size=2, gaussian_stride=4,
            hidden_size=32, pose_dim=16, num_layers=1, head_dim=16)


def save_lalrm(directory, **overrides):
  config = LaLRMConfig(**dict(TINY_LALRM, **overrides))
  return checkpoints.save(directory, LaLRM(config, rngs=nnx.Rngs(0)), kind="lalrm", config=config.to_dict())


def make_lalrm(tmp_path_factory):
  return save_lalrm(tmp_path_factory.mktemp("lalrm") / "model")
