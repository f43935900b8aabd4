"""`wonderland sample` end to end on a converted tiny CogVideoX pipeline (tokenizer, T5, transformer, VAE)."""


import imageio.v3 as iio
import numpy as np

from wonderland_jax.cli import main
from wonderland_jax.io_utils import write_png


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
