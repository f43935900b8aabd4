"""`wonderland sample` end to end on a converted tiny CogVideoX pipeline (tokenizer, T5, transformer, VAE)."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from transformers import T5Config, T5EncoderModel

from tests.reference_models import make_t5_tokenizer
from wonderland_jax.cli import main
from wonderland_jax.io_utils import write_png

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


def test_sample_writes_a_video_and_latents(tmp_path, converted):
  image = tmp_path / "first.png"
  write_png(image, np.random.default_rng(0).uniform(0, 1, (24, 20, 3)))
  video, latents = tmp_path / "video.mp4", tmp_path / "latents.npz"
  args = ["sample", "--model", str(converted), "--image", str(image), "--prompt", "a castle at dusk",
          "--frames", "9", "--steps", "2", "--guidance", "6", "--seed", "3", "--out", str(video),
          "--latents", str(latents)]
  assert main(args) == 0
  frames = iio.imread(video)
  assert frames.shape == (9, 32, 32, 3)  # the model's default size (8x8 latents, 4x VAE)
  saved = np.load(latents)["latents"]
  assert saved.shape == (1, 3, 8, 8, 4) and np.all(np.isfinite(saved))
  # Same seed, same result; another seed, another video.
  assert main(args[:-4] + ["--out", str(tmp_path / "again.mp4"), "--latents", str(tmp_path / "again.npz")]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "again.npz")["latents"], saved)
  assert main(args[:-6] + ["--seed", "4", "--out", str(tmp_path / "other.mp4"), "--latents",
                           str(tmp_path / "other.npz")]) == 0
  assert not np.allclose(np.load(tmp_path / "other.npz")["latents"], saved)


def test_sample_errors(tmp_path, converted, capsys):
  image = tmp_path / "first.png"
  write_png(image, np.zeros((16, 16, 3)))
  base = ["sample", "--model", str(converted), "--image", str(image), "--prompt", "x", "--out",
          str(tmp_path / "v.mp4")]
  assert main(base + ["--frames", "10"]) == 2
  assert "1 + 4k" in capsys.readouterr().err
  assert main(base + ["--size", "20x16"]) == 2
  assert "multiples of 8" in capsys.readouterr().err
  assert main(["sample", "--model", str(tmp_path), "--image", str(image), "--prompt", "x", "--out",
               str(tmp_path / "v.mp4")]) == 2
  assert "not a converted pipeline" in capsys.readouterr().err
  assert not (tmp_path / "v.mp4").exists()
