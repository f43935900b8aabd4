"""`wonderland demo` end to end on the shipped weights (few sampling steps): every output is there and readable,
the report's stage times and PSNRs are finite; the shipped LaLRM reconstructs held-out scenes better than its
untrained self (MANIFEST.json)."""

import json
import math

import imageio.v3 as iio
import numpy as np

from wonderland_jax.cli import main
from wonderland_jax.demo import NOVEL_FRAMES, OUTPUTS, RENDER_SCALE, weights_directory
from wonderland_jax.outputs import MANIFEST
from wonderland_jax.splat import load_ply


def test_demo_runs_the_pipeline_on_the_shipped_weights(tmp_path, capsys):
  out = tmp_path / "demo"
  assert main(["demo", "--out", str(out), "--steps", "2"]) == 0
  printed = capsys.readouterr().out
  assert str(out) in printed and "wonderland convert cogvideox --src" in printed
  assert "wonderland generate --model" in printed
  assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, MANIFEST])
  scene = load_ply(out / "scene.ply")
  assert scene.num == 9 * 16 * 16  # the tiny LaLRM: one Gaussian per 2x2 pixels of each of the 9 frames
  assert np.all(np.isfinite(np.asarray(scene.means)))
  size = 32 * RENDER_SCALE
  for name, shape in (("flythrough.mp4", (9, size, size, 3)), ("novel_orbit.mp4", (NOVEL_FRAMES, size, size, 3)),
                      ("video.mp4", (9, 32, 32, 3)), ("ground_truth.mp4", (9, 32, 32, 3))):
    assert iio.imread(out / name).shape == shape, name
  latents = np.load(out / "latents.npz")
  assert latents["scaled_latents"].shape == (1, 3, 4, 4, 16) and latents["viewmats"].shape == (9, 4, 4)
  report = json.loads((out / "report.json").read_text())
  assert {"loading", "sampling", "reconstruction", "decoding", "evaluation", "flythrough",
          "novel_orbit"} == set(report["seconds"])
  assert all(math.isfinite(v) and v > 0 for v in report["seconds"].values())
  assert set(report["psnr"]) == {"flythrough", "video", "lalrm_on_ground_truth_latents", "input_frame_held_still"}
  assert all(math.isfinite(v) and v > 5 for v in report["psnr"].values()), report["psnr"]
  assert report["num_gaussians"] == scene.num and report["inputs"]["steps"] == 2
  assert "flythrough" in (out / "report.md").read_text()
  # An existing output is kept unless --overwrite.
  assert main(["demo", "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err


def test_the_shipped_models_beat_their_untrained_selves():
  manifest = json.loads((weights_directory() / "MANIFEST.json").read_text())
  lalrm, dit = manifest["held_out"]["lalrm"], manifest["held_out"]["camera_dit"]
  assert lalrm["psnr"] > lalrm["untrained_psnr"] + 3, lalrm
  assert lalrm["psnr"] > lalrm["mean_colour_baseline_psnr"], lalrm
  assert dit["v_mse"] < 0.7 * dit["untrained_v_mse"], dit
  assert manifest["bytes"]["total"] < 16e6
  assert set(manifest["commands"]) == {"vae", "pipeline", "camera_dit", "lalrm"}
