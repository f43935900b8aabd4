"""`wonderland generate-latents` on the tiny converted pipeline: split over processes, packed into a latent cache
the trainer reads, reproducible per sample, and resumable after a kill without losing what was written."""

from __future__ import annotations

import numpy as np
import pytest

from wonderland_jax.camera import PoseSequence, make_trajectory
from wonderland_jax.camera.io import write_realestate10k
from wonderland_jax.cli import main
from wonderland_jax.data import LatentCache, generated, make_train_iterator
from wonderland_jax.io_utils import write_png


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
  """Two image prompts (one with a .txt prompt beside it) and two RealEstate10K pose files of 24 frames."""
  root = tmp_path_factory.mktemp("generate_inputs")
  rng = np.random.default_rng(0)
  (root / "images").mkdir()
  write_png(root / "images" / "a.png", rng.uniform(0, 1, (40, 36, 3)))
  write_png(root / "images" / "b.png", rng.uniform(0, 1, (32, 32, 3)))
  (root / "images" / "b.txt").write_text("a red house by the sea\n")
  (root / "poses").mkdir()
  for name, degrees in (("orbit", 60.0), ("wide", 120.0)):
    cameras = make_trajectory("orbit", 24, width=32, height=32, degrees=degrees)
    write_realestate10k(root / "poses" / f"{name}.txt", PoseSequence(cameras, [str(1000 * i) for i in range(24)]))
  return root


def _command(converted, branch, prompts, out, *extra):
  return ["generate-latents", "--model", str(converted), "--branch", str(branch), "--images",
          str(prompts / "images"), "--poses", str(prompts), "--num", "3", "--frames", "9", "--steps", "2",
          "--stride", "1,2", "--target-views", "4", "--prompt", "a garden", "--out", str(out), *extra]


def test_generate_latents_split_packed_and_resumed(tmp_path, converted, branch, prompts, monkeypatch, capsys):
  out = tmp_path / "generated"
  split = ["--process-count", "2", "--process-index"]
  assert main(_command(converted, branch, prompts, out, *split, "1")) == 0  # sample 1 of 0..2
  assert sorted(path.name for path in (out / "samples").iterdir()) == ["sample-0000001.npz"]
  assert not (out / "index.json").exists()  # not a cache until every sample exists
  assert main(_command(converted, branch, prompts, out, *split, "0")) == 0  # samples 0 and 2, then packs
  assert "3 samples in" in capsys.readouterr().out

  cache = LatentCache(out)
  assert len(cache) == 3 and cache.holds_samples and not cache.has_std
  settings = generated.GenerationSettings(**(cache.index["dataset_spec"]["generated"]
                                           | {"stride": (1, 2)}))
  images, poses = generated.image_prompts(prompts / "images"), generated.pose_files(prompts)
  for index in range(3):
    record = cache[index]
    plan = generated.sample_plan(settings, index, 2, 2)
    assert str(record["prompt"]) == ("a red house by the sea" if plan["image"] == 1 else "a garden")
    assert int(record["seed"]) == plan["seed"] and int(record["scene_index"]) == plan["pose_file"]
    assert record["latents"].shape == (3, 8, 8, 4) and np.all(np.isfinite(record["latents"]))
    assert record["target_images"].shape == (4, 32, 32, 3) and record["target_is_seen"].all()
    np.testing.assert_allclose(record["viewmats"][0], np.eye(4), atol=1e-6)  # re-based on the first camera
    assert np.all(np.diff(record["frame_indices"]) == np.diff(record["frame_indices"])[0])  # one stride
    assert set(record["target_indices"]) <= set(record["frame_indices"])
  # Each sample is reproducible from (seed, index) alone.
  from wonderland_jax.diffusion.camera_pipeline import CameraVideoPipeline  # noqa: PLC0415
  pipe = CameraVideoPipeline.load(converted, branch)
  again = generated.make_sample(pipe, settings, 1, images, poses)
  np.testing.assert_allclose(again["latents"], cache[1]["latents"], rtol=1e-5, atol=1e-5)

  batch = next(make_train_iterator({"source": "latents", "root": str(out), "batch_size": 2}, process_index=0,
                                   process_count=1))
  assert batch["latents"].shape == (2, 3, 8, 8, 4) and "prompt" not in batch and "seed" not in batch

  # A run killed after its first sample keeps it whole (and nothing half-written); the rerun finishes the same
  # dataset, byte for byte.
  killed = tmp_path / "killed"
  make_sample, calls = generated.make_sample, []

  def dies_on_the_second(*args, **kwargs):
    calls.append(args[2])
    if len(calls) == 2:
      raise KeyboardInterrupt
    return make_sample(*args, **kwargs)
  monkeypatch.setattr(generated, "make_sample", dies_on_the_second)
  assert main(_command(converted, branch, prompts, killed)) == 130
  assert sorted(path.name for path in (killed / "samples").iterdir()) == ["sample-0000000.npz"]
  monkeypatch.setattr(generated, "make_sample", make_sample)
  assert main(_command(converted, branch, prompts, killed)) == 0
  for index in range(3):
    name = f"sample-{index:07d}.npz"
    assert (killed / "samples" / name).read_bytes() == (out / "samples" / name).read_bytes(), name
  capsys.readouterr()

  # Errors: one line, exit 2, nothing written.
  assert main(_command(converted, branch, prompts, killed, "--steps", "3")) == 2
  assert "made with other settings (num_inference_steps: 2 there, 3 now)" in capsys.readouterr().err
  assert main(_command(converted, branch, prompts, tmp_path / "none", "--poses", str(tmp_path / "nowhere"))) == 2
  assert "--poses" in capsys.readouterr().err and not (tmp_path / "none").exists()
  assert main(_command(converted, branch, prompts, tmp_path / "none", "--pair-by-name")) == 2
  assert "--pair-by-name: no image named orbit.png/.jpg" in capsys.readouterr().err
  assert not (tmp_path / "none").exists()
  partial = tmp_path / "partial"
  assert main(_command(converted, branch, prompts, partial, *split, "1")) == 0
  assert main(["generate-latents", "--out", str(partial), "--pack-only"]) == 2
  assert "2 of 3 samples missing (first: sample-0000000.npz)" in capsys.readouterr().err
