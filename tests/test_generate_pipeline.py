"""`wonderland generate` (wonderland_jax.pipeline) end to end on tiny random models: a converted CogVideoX
pipeline, a camera branch and an LaLRM reading its latents; plus `reconstruct_latents`' units."""

import importlib.util
import json
import sys

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from tests.helpers.pipelines import save_lalrm
from tests.helpers.poses import moved_rigidly, similar_world, write_colmap_text_model
from wonderland_jax import checkpoints
from wonderland_jax.camera import make_trajectory
from wonderland_jax.camera.sfm import align_to_conditioning, rebased_cameras
from wonderland_jax.cli import main
from wonderland_jax.io_utils import write_png
from wonderland_jax.outputs import MANIFEST
from wonderland_jax.reconstruct import reconstruct_latents
from wonderland_jax.splat import load_ply


# Reads the tiny VAE's latents: 32x32 video -> 8x8 latents -> 4x4 tokens -> one Gaussian per 2x2 pixels.
def test_reconstruct_latents_returns_the_input_units(lalrm):
  model = checkpoints.load(lalrm)
  latents = jax.random.normal(jax.random.key(0), (1, 3, 8, 8, 4))
  cameras = make_trajectory("orbit", 9, width=64, height=64)
  scene, rebased, scale = reconstruct_latents(model, latents, cameras)
  moved = moved_rigidly(cameras, 3.0)  # another world frame, 3x the units
  scene_moved, rebased_moved, scale_moved = reconstruct_latents(model, latents, moved)
  assert scene.num == 9 * 16 * 16 and (rebased.width, rebased.height) == (32, 32)
  np.testing.assert_allclose(scale_moved * 3, scale, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(scene_moved.means), 3 * np.asarray(scene.means), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(rebased_moved.viewmat[:, :3, 3]), 3 * np.asarray(rebased.viewmat[:, :3, 3]),
                             atol=1e-4)


def test_generate_writes_the_scene_videos_latents_and_report(tmp_path, converted, branch, lalrm, capsys):
  image = tmp_path / "first.png"
  write_png(image, np.random.default_rng(0).uniform(0, 1, (24, 20, 3)))
  base = ["generate", "--model", str(converted), "--branch", str(branch), "--lalrm", str(lalrm), "--image",
          str(image), "--trajectory", "orbit", "--frames", "9", "--steps", "2", "--seed", "3"]
  out = tmp_path / "out"
  assert main(base + ["--out", str(out)]) == 0
  assert str(out) in capsys.readouterr().out
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["scene.ply", "flythrough.mp4", "novel_orbit.mp4", "latents.npz", "report.json", MANIFEST])
  scene = load_ply(out / "scene.ply")
  assert scene.num == 9 * 16 * 16  # the LaLRM's map: one Gaussian per 2x2 pixels of every frame
  for name in ("flythrough.mp4", "novel_orbit.mp4"):
    assert iio.imread(out / name).shape == (9, 32, 32, 3)  # the model's default size
  saved = np.load(out / "latents.npz")
  assert saved["scaled_latents"].shape == (1, 3, 8, 8, 4) and np.all(np.isfinite(saved["scaled_latents"]))
  assert saved["viewmats"].shape == (9, 4, 4) and saved["intrinsics"].shape == (9, 3, 3)
  np.testing.assert_allclose(saved["viewmats"][0], np.eye(4), atol=1e-6)  # re-based on the first camera
  report = json.loads((out / "report.json").read_text())
  assert {"loading", "sampling", "reconstruction", "flythrough", "novel_orbit"} <= set(report["seconds"])
  assert report["peak_rss_bytes"] > 2 ** 20 and report["num_gaussians"] == scene.num
  assert report["inputs"]["trajectory"] == "orbit" and report["outputs"]["scene.ply"] == str(out / "scene.ply")
  assert report["poses"] == {"requested": "conditioning", "used": "conditioning", "frames": 9}

  # --decode-video adds video.mp4; the same seed gives the same latents and scene.
  again = tmp_path / "again"
  assert main(base + ["--decode-video", "--out", str(again)]) == 0
  assert iio.imread(again / "video.mp4").shape == (9, 32, 32, 3)
  assert "decoding" in json.loads((again / "report.json").read_text())["seconds"]
  np.testing.assert_array_equal(np.load(again / "latents.npz")["scaled_latents"], saved["scaled_latents"])
  np.testing.assert_allclose(load_ply(again / "scene.ply").means, scene.means, atol=1e-5)
  capsys.readouterr()

  # A non-empty --out needs --overwrite; an LaLRM that cannot read the VAE's latents fails before sampling.
  assert main(base + ["--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  wrong = save_lalrm(tmp_path / "lalrm16", latent_channels=16)
  bad = tmp_path / "bad"
  assert main(base[:5] + ["--lalrm", str(wrong)] + base[7:] + ["--out", str(bad)]) == 2
  err = capsys.readouterr().err
  assert f"{wrong}: the LaLRM reads latents with latent_channels=16" in err and "latent_channels=4" in err
  assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def _generate_flags(tmp_path, converted, branch, lalrm):
  image = tmp_path / "first.png"
  write_png(image, np.random.default_rng(0).uniform(0, 1, (32, 32, 3)))
  return ["generate", "--model", str(converted), "--branch", str(branch), "--lalrm", str(lalrm), "--image",
          str(image), "--trajectory", "orbit", "--frames", "9", "--steps", "1"]


def test_generate_poses_colmap_reconstructs_with_the_models_cameras(tmp_path, converted, branch, lalrm, capsys):
  conditioning = make_trajectory("orbit", 9, width=32, height=32)  # what --trajectory orbit --frames 9 gives
  strayed = np.asarray(conditioning.c2w, np.float64).copy()
  strayed[1:, 1, 3] += 0.2 * np.linspace(0, 1, 8)  # the video drifted down from its conditioning path
  names = [f"frame_{index:05d}.png" for index in range(9)]
  moved = similar_world(strayed, 3.7)  # COLMAP's frame and units
  write_colmap_text_model(tmp_path / "colmap", moved, np.asarray(conditioning.K), 32, 32, names)
  out = tmp_path / "out"
  base = _generate_flags(tmp_path, converted, branch, lalrm)
  assert main(base + ["--poses", f"colmap:{tmp_path / 'colmap'}", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  expected, alignment = align_to_conditioning(moved, conditioning)
  assert report["poses"]["used"] == "colmap" and report["poses"]["registered"] == 9
  assert report["poses"]["scale"] == pytest.approx(alignment["scale"], rel=1e-6) and "poses" in report["seconds"]
  assert report["inputs"]["poses"] == f"colmap:{tmp_path / 'colmap'}"
  # The LaLRM's cameras (latents.npz, the flythrough) are the model's, aligned; not the conditioning ones.
  saved = np.load(out / "latents.npz")["viewmats"]
  np.testing.assert_allclose(saved, np.asarray(rebased_cameras(expected, 32, 32).viewmat), atol=1e-5)
  assert np.abs(saved - np.asarray(rebased_cameras(conditioning, 32, 32).viewmat)).max() > 0.05
  capsys.readouterr()

  # A model of another frame count: one line naming it, before sampling.
  write_colmap_text_model(tmp_path / "short", moved[:8], np.asarray(conditioning.K)[:8], 32, 32, names[:8])
  assert main(base + ["--poses", f"colmap:{tmp_path / 'short'}", "--out", str(tmp_path / "bad")]) == 2
  err = capsys.readouterr().err.strip()
  assert f"{tmp_path / 'short'}: a COLMAP model of 8 images but the video has 9 frames" in err and "\n" not in err
  with pytest.raises(SystemExit, match="2"):
    main(base + ["--poses", "colmap", "--out", str(tmp_path / "bad")])
  assert "--poses: expected conditioning, colmap:<model dir> or sfm, got 'colmap'" in capsys.readouterr().err


def test_generate_poses_sfm_falls_back_when_the_video_does_not_register(tmp_path, converted, branch, lalrm, capsys,
                                                                        caplog, monkeypatch):
  base = _generate_flags(tmp_path, converted, branch, lalrm)
  if importlib.util.find_spec("pycolmap") is not None:
    # A 32x32 video of random weights: nothing for SIFT, so the conditioning cameras are used and report.json
    # says so; sfm decoded the video, so video.mp4 is written.
    out = tmp_path / "out"
    assert main(base + ["--poses", "sfm", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["poses"]["requested"] == "sfm" and report["poses"]["used"] == "conditioning"
    assert "frames registered" in report["poses"]["fallback"] and {"decoding", "poses"} <= set(report["seconds"])
    assert "--poses sfm: 0 of 9 frames registered (at least 5 needed)" in caplog.text and (out / "video.mp4").is_file()
  monkeypatch.setitem(sys.modules, "pycolmap", None)  # without the sfm extra: one line, before loading
  assert main(base + ["--poses", "sfm", "--out", str(tmp_path / "none")]) == 2
  assert "--poses sfm needs pycolmap: pip install 'wonderland_jax[sfm]'" in capsys.readouterr().err



def test_one_call_pipeline_from_a_wonderland_folder_and_demo(tmp_path, converted, branch, lalrm, capsys):
  from wonderland_jax.pipeline import WonderlandPipeline, fit_image, generate_scene  # noqa: PLC0415
  folder = tmp_path / "wonderland"
  folder.mkdir()
  for name, target in (("pipeline", converted), ("branch", branch), ("lalrm", lalrm)):
    (folder / name).symlink_to(target, target_is_directory=True)
  pipe = WonderlandPipeline.from_pretrained(folder, dtype="float32", attention="xla")
  image = np.zeros((20, 60, 3), np.uint8)  # any size: covered and centre-cropped to the model's 32 x 32
  image[:, 20:40] = (255, 0, 0)
  result = pipe(image, trajectory="orbit", prompt="a red door", num_frames=9, num_inference_steps=2, seed=3)
  assert result.video.shape == (9, 32, 32, 3) and result.latents.shape == (1, 3, 8, 8, 4)
  assert result.gaussians.num > 0 and len(result.cameras) == 9
  cropped = fit_image(image.astype(np.float32) / 255, 32, 32)
  assert cropped[:, 2:30, 0].min() > 0.99 and cropped[..., 1:].max() == 0  # only the red middle third: cropped,
  # not squeezed (a plain resize to 32 x 32 would keep the black thirds)
  cameras = make_trajectory("orbit", 9, width=32, height=32)
  same, _ = generate_scene(pipe, cropped, cameras, "a red door", key=jax.random.key(3), num_inference_steps=2)
  np.testing.assert_allclose(result.gaussians.means, same.means, rtol=1e-5, atol=1e-5)  # the same as the parts
  names = result.save(tmp_path / "out")
  assert set(names) <= set(path.name for path in (tmp_path / "out").iterdir()) and "video.mp4" in names
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["inputs"]["seed"] == 3 and report["inputs"]["trajectory"] == "orbit"
  with pytest.raises(Exception, match="neither a preset"):
    pipe(image, trajectory="circle")

  # `--model demo`: the shipped models, no --branch / --lalrm.
  write_png(tmp_path / "in.png", np.random.default_rng(0).uniform(0, 1, (48, 40, 3)))
  assert main(["generate", "--model", "demo", "--image", str(tmp_path / "in.png"), "--trajectory", "orbit",
               "--frames", "9", "--steps", "2", "--guidance", "1", "--out", str(tmp_path / "demo_out")]) == 0
  assert (tmp_path / "demo_out" / "scene.ply").is_file()
  capsys.readouterr()
  assert main(["generate", "--model", str(converted), "--image", str(tmp_path / "in.png"), "--trajectory", "orbit",
               "--out", str(tmp_path / "no")]) == 2
  assert "no branch/ beside it; give branch= (CLI: --branch)" in capsys.readouterr().err
