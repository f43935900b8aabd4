"""Camera-guided generation: the rays do not depend on the trajectory's world frame or units, CogVideoX 1.5
padding frames get the first camera, and `wonderland generate-video` end to end on a converted tiny pipeline
with a saved camera branch (presets and pose files)."""

import types

import imageio.v3 as iio
import numpy as np
import pytest

from tests.helpers.poses import moved_rigidly
from wonderland_jax.camera import PoseSequence, conditioning_rays, make_trajectory, write_realestate10k
from wonderland_jax.cli import main
from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline
from wonderland_jax.errors import WonderlandError
from wonderland_jax.io_utils import write_png
from wonderland_jax.models.dit import DiTConfig


def test_rays_are_rebased_and_scale_normalised():
  cameras = make_trajectory("orbit", 5, width=16, height=12)  # starts at the identity; farthest camera ~2 away
  expected = conditioning_rays(moved_rigidly(cameras, 0.5), 12, 16)
  moved = conditioning_rays(moved_rigidly(cameras, 7.0, seed=1), 12, 16)
  np.testing.assert_allclose(np.asarray(moved), np.asarray(expected), atol=2e-5)
  assert expected.shape == (5, 12, 16, 6)
  np.testing.assert_array_equal(np.asarray(expected[0, ..., :3]), 0)  # frame 0 at the origin: zero moment
  # Scale-normalised: the farthest camera is 1 from the first (the default max_distance, target 1).
  unit = make_trajectory("orbit", 5, width=16, height=12, radius=1.0)  # 60 degrees: the chord is the radius
  np.testing.assert_allclose(np.asarray(expected), np.asarray(conditioning_rays(unit, 12, 16, scale_mode="none")),
                             atol=2e-5)


def test_cogvideox_15_padding_frames_get_the_first_camera():
  config = DiTConfig.from_diffusers(dict(num_attention_heads=2, attention_head_dim=16, in_channels=8, num_layers=1,
                                         patch_size_t=2, patch_bias=False, ofs_embed_dim=12))
  video = types.SimpleNamespace(transformer=types.SimpleNamespace(config=config),
                                check=lambda frames, height, width: (frames - 1) // 4 + 1)
  pipe = CameraVideoPipeline(video)
  cameras = make_trajectory("dolly", 9, width=16, height=16)  # 3 latent frames, sampled as 4 (whole patches)
  rays = np.asarray(pipe.plucker(cameras, 16, 16))
  assert rays.shape == (1, 13, 16, 16, 6)
  np.testing.assert_array_equal(rays[0, :5], np.broadcast_to(rays[0, 4], (5, 16, 16, 6)))
  np.testing.assert_array_equal(rays[0, 4:], np.asarray(conditioning_rays(cameras, 16, 16)))
  with pytest.raises(WonderlandError, match="--frames 5 but the trajectory has 9 cameras"):
    pipe.generate(np.zeros((16, 16, 3)), "", cameras, num_frames=5, key=None)


def test_generate_video_follows_presets_and_pose_files(tmp_path, converted, branch, capsys):
  image = tmp_path / "first.png"
  write_png(image, np.random.default_rng(0).uniform(0, 1, (24, 20, 3)))
  base = ["generate-video", "--model", str(converted), "--branch", str(branch), "--image", str(image),
          "--prompt", "a castle at dusk", "--steps", "2", "--seed", "3"]
  assert main(base + ["--trajectory", "orbit", "--frames", "9", "--out", str(tmp_path / "orbit.mp4"),
                      "--latents", str(tmp_path / "orbit.npz")]) == 0
  assert iio.imread(tmp_path / "orbit.mp4").shape == (9, 32, 32, 3)  # the model's default size (8x8 latents)
  orbit = np.load(tmp_path / "orbit.npz")["latents"]
  assert orbit.shape == (1, 3, 8, 8, 4) and np.all(np.isfinite(orbit))
  # The same orbit in another world frame and units, from a RealEstate10K file (its length sets the frames),
  # through merged adapters: the same video up to rounding. (That the cameras matter is test_camera_sampling's.)
  poses = tmp_path / "poses.txt"
  write_realestate10k(poses, PoseSequence(moved_rigidly(make_trajectory("orbit", 9, width=32, height=32), 3.0),
                                          [str(i) for i in range(9)]))
  assert main(base + ["--trajectory", str(poses), "--merge-lora", "--out", str(tmp_path / "poses.mp4"),
                      "--latents", str(tmp_path / "poses.npz")]) == 0
  assert iio.imread(tmp_path / "poses.mp4").shape == (9, 32, 32, 3)
  np.testing.assert_allclose(np.load(tmp_path / "poses.npz")["latents"], orbit, atol=1e-3 * np.abs(orbit).max())
  capsys.readouterr()

  # Errors name the flag at fault and write nothing.
  out = ["--out", str(tmp_path / "bad.mp4")]
  assert main(base + ["--trajectory", str(poses), "--frames", "5"] + out) == 2
  assert f"--frames 5 but --trajectory {poses} has 9 poses" in capsys.readouterr().err
  assert main(base + ["--trajectory", str(poses), "--param", "degrees=90"] + out) == 2
  assert "--param is for the presets" in capsys.readouterr().err
  assert main(base + ["--trajectory", "circle"] + out) == 2
  assert "neither a preset" in capsys.readouterr().err
  assert main(base + ["--trajectory", "orbit", "--frames", "10"] + out) == 2
  assert "1 + 4k" in capsys.readouterr().err
  assert main(base[:4] + [str(converted / "transformer")] + base[5:] + ["--trajectory", "orbit"] + out) == 2
  assert "not a camera branch" in capsys.readouterr().err
  assert not (tmp_path / "bad.mp4").exists()
