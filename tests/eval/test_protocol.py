"""`wonderland eval video|scene` on tiny random models and a synthetic RealEstate10K-layout dataset: the clip
sampling, the table's columns against direct computations, COLMAP pose errors, resuming and its errors."""

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.helpers.poses import similar_world, write_colmap_text_model
from wonderland_jax.cli import main
from wonderland_jax.data import write_synthetic_dataset
from wonderland_jax.data.scenes import scan_dataset
from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval.camera_metrics import camera_errors, colmap_trajectory
from wonderland_jax.eval.frechet import feature_statistics, frechet_distance
from wonderland_jax.eval.image_metrics import psnr, ssim
from wonderland_jax.eval.protocol import EvalRun, MetricNetworks, clip_inputs, run_evaluation, sample_clips, similarity

NUM_SCENES, SCENE_FRAMES = 3, 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_data") / "re10k"
  write_synthetic_dataset(root, NUM_SCENES, height=32, width=48, num_frames=SCENE_FRAMES)
  return root


def test_sample_clips_one_per_scene_seeded(dataset):
  scan = scan_dataset(dataset, "realestate10k")
  clips = sample_clips(scan, 5, num_frames=9, stride=2, seed=3)
  assert len(clips) == NUM_SCENES and len({clip.scene for clip in clips}) == NUM_SCENES  # fewer scenes than --num
  for clip in clips:
    assert np.all(np.diff(clip.indices) == 2) and len(clip.indices) == 9 and clip.indices[-1] < SCENE_FRAMES
  assert clips == sample_clips(scan, 5, num_frames=9, stride=2, seed=3)
  assert [clip.indices for clip in clips] != [clip.indices for clip in sample_clips(scan, 5, 9, 2, seed=4)]
  assert len(sample_clips(scan, 2, 9, 2, seed=3)) == 2
  with pytest.raises(WonderlandError, match="no scene has the 25 frames"):
    sample_clips(scan, 2, num_frames=13, stride=2)


def _features(images):
  """A cheap stand-in feature network: per-channel means and standard deviations over 4 image quadrants."""
  images = np.asarray(images)
  height, width = images.shape[-3] // 2, images.shape[-2] // 2
  quadrants = [images[..., i * height:(i + 1) * height, j * width:(j + 1) * width, :] for i in (0, 1) for j in (0, 1)]
  return np.concatenate([np.concatenate([q.mean((-3, -2)), q.std((-3, -2))], -1) for q in quadrants], -1)


def _write_colmap(directory, viewmats, registered):
  """A COLMAP text model whose image frame_{k:05d}.png has world->camera viewmats[k], for k in registered."""
  directory.mkdir(parents=True)
  (directory / "cameras.txt").write_text("1 PINHOLE 32 32 30.0 30.0 16.0 16.0\n")
  lines = []
  for image_id, k in enumerate(registered, 1):
    q = Rotation.from_matrix(viewmats[k, :3, :3]).as_quat()[[3, 0, 1, 2]]
    values = " ".join(repr(float(v)) for v in (*q, *viewmats[k, :3, 3]))
    lines.append(f"{image_id} {values} 1 frame_{k:05d}.png\n")
  (directory / "images.txt").write_text("\n".join(lines) + "\n")


def test_eval_video_table_equals_direct_metrics(dataset, tmp_path):
  """run_evaluation with stand-in feature networks: FID / FVD, PSNR / SSIM and the pose errors of the table equal
  the same computations done here from the written files."""
  scan = scan_dataset(dataset, "realestate10k")
  clips = sample_clips(scan, 2, num_frames=9, stride=2, seed=0)
  networks = MetricNetworks(lpips=lambda a, b: np.abs(a - b).mean((1, 2, 3)), inception=_features,
                            i3d=lambda videos: _features(videos).mean(1))
  rng = np.random.default_rng(0)

  def generate(clip, image, cameras):  # the first frame, then noise around it
    return np.clip(image[None] + rng.normal(scale=0.1, size=(len(cameras), *image.shape)), 0, 1)

  colmap = tmp_path / "colmap"
  out = tmp_path / "out"
  run = EvalRun("video", scan, clips, out, networks, 32, 32, "RE10K-tiny", colmap)
  scene = {ref.name: ref.load() for ref in scan.scenes}
  # COLMAP models: clip 0's are the reference cameras moved, turned and scaled (errors 0), with frame 5 missing;
  # clip 1's are perturbed.
  for clip, noise in zip(clips, (0.0, 0.05)):
    _, cameras = clip_inputs(scene[clip.scene], clip, 32, 32)
    viewmats = np.asarray(cameras.viewmat, np.float64)
    c2w = np.linalg.inv(viewmats)
    c2w[:, :3, 3] = 2.5 * c2w[:, :3, 3] + 1.0 + noise * rng.normal(size=(9, 3))
    _write_colmap(colmap / clip.id, np.linalg.inv(c2w), [k for k in range(9) if k != 5 or noise])
  row = run_evaluation(run, generate)

  generated, reference, expected_pose = [], [], []
  for clip in clips:
    directory = out / "clips" / clip.id
    frames = iio.imread(directory / "frames" / "frame_00003.png")
    assert frames.shape == (32, 32, 3)
    features = np.load(directory / "features.npz")
    generated.append(features["inception_generated"])
    reference.append(features["inception_reference"])
    ref_frames, cameras = clip_inputs(scene[clip.scene], clip, 32, 32)
    np.testing.assert_allclose(features["inception_reference"], _features(ref_frames), rtol=1e-6)
    record = json.loads((directory / "record.json").read_text())
    assert record["clip"]["indices"] == list(clip.indices) and len(record["per_frame"]["psnr"]) == 9
    assert iio.imread(directory / "generated.mp4").shape == (9, 32, 32, 3)
    expected_pose.append(camera_errors(colmap_trajectory(colmap / clip.id, 9), np.asarray(cameras.viewmat)))
  fid = frechet_distance(feature_statistics(np.concatenate(reference)), feature_statistics(np.concatenate(generated)))
  assert row["FID"] == pytest.approx(fid, rel=1e-6)  # float32 features, float64 sums and row["fid_frames"] == 18
  assert row["FVD"] is not None and row["fvd_videos"] == 2
  assert expected_pose[0].rotation < 1e-3 and expected_pose[0].translation < 1e-3
  assert 5 not in expected_pose[0].frames and expected_pose[1].translation > 0.01
  assert row["RotErr"] == pytest.approx(np.mean([e.rotation for e in expected_pose]))
  assert row["TransErr"] == pytest.approx(np.mean([e.translation for e in expected_pose]))
  assert row["posed_clips"] == 2 and 0 < row["PSNR"] < 40 and 0 < row["SSIM"] < 1 and row["LPIPS"] > 0
  table = (out / "results.md").read_text()
  assert table.startswith("| Dataset | FID | FVD | RotErr | TransErr | LPIPS | PSNR | SSIM | Clips |")
  assert f"| RE10K-tiny | {row['FID']:.2f} | {row['FVD']:.2f} |" in table
  assert json.loads((out / "results.json").read_text())["row"]["clips"] == 2


def _eval_flags(converted, branch, dataset, out, kind="video"):
  return ["eval", kind, "--data", str(dataset), "--format", "realestate10k", "--num", "2", "--frames", "9",
          "--stride", "2", "--model", str(converted), "--branch", str(branch), "--steps", "2", "--out", str(out)]


def test_eval_video_cli_resumes_and_refuses_other_settings(converted, branch, dataset, tmp_path, capsys):
  out = tmp_path / "ev"
  assert main(_eval_flags(converted, branch, dataset, out)) == 0
  printed = capsys.readouterr().out
  assert "| realestate10k | - | - | - | - |" in printed and str(out / "results.md") in printed
  results = json.loads((out / "results.json").read_text())["row"]
  clip_dirs = sorted((out / "clips").iterdir())
  assert len(clip_dirs) == 2 and results["clips"] == 2 and results["FID"] is None
  first = np.load(clip_dirs[0] / "features.npz")  # empty: no feature networks given
  assert len(first.files) == 0
  reference = json.loads((clip_dirs[1] / "record.json").read_text())
  # A killed run: clip 1 never finished. The rerun redoes it alone, with the same noise (keys per clip).
  shutil.rmtree(clip_dirs[1])
  kept = (clip_dirs[0] / "record.json").stat().st_mtime_ns
  assert main(_eval_flags(converted, branch, dataset, out)) == 0
  assert (clip_dirs[0] / "record.json").stat().st_mtime_ns == kept
  redone = json.loads((clip_dirs[1] / "record.json").read_text())
  np.testing.assert_allclose(redone["per_frame"]["psnr"], reference["per_frame"]["psnr"], rtol=1e-5)
  assert main(_eval_flags(converted, branch, dataset, out) + ["--seed", "1"]) == 2
  assert "other settings (seed)" in capsys.readouterr().err


def test_eval_scene_cli(converted, branch, lalrm, dataset, tmp_path, capsys):
  out = tmp_path / "es"
  assert main(_eval_flags(converted, branch, dataset, out, "scene") + ["--lalrm", str(lalrm), "--num", "1"]) == 0
  assert "| Dataset | LPIPS | PSNR | SSIM | Clips |" in capsys.readouterr().out
  row = json.loads((out / "results.json").read_text())["row"]
  assert row["clips"] == 1 and np.isfinite(row["PSNR"]) and row["LPIPS"] is None
  (clip_dir,) = (out / "clips").iterdir()
  assert iio.imread(clip_dir / "renders.mp4").shape == (9, 32, 32, 3)  # min(14, F) views


def test_eval_scene_poses_colmap_reads_a_model_per_clip(converted, branch, lalrm, dataset, tmp_path, capsys):
  scan = scan_dataset(dataset, "realestate10k")
  first, second = sample_clips(scan, 2, num_frames=9, stride=2, seed=0)  # the clips the command samples
  scene = next(ref.load() for ref in scan.scenes if ref.name == first.scene)
  _, cameras = clip_inputs(scene, first, 32, 32)
  # Clip 0: a COLMAP model of its frames in another similarity frame; clip 1: none (conditioning, a warning).
  write_colmap_text_model(tmp_path / "colmap" / first.id, similar_world(np.asarray(cameras.c2w), 3.7),
                          np.asarray(cameras.K), 32, 32, [f"frame_{index:05d}.png" for index in range(9)])
  flags = _eval_flags(converted, branch, dataset, tmp_path / "es", "scene") + ["--lalrm", str(lalrm)]
  assert main(flags + ["--poses", f"colmap:{tmp_path / 'colmap'}"]) == 0
  records = [json.loads((tmp_path / "es" / "clips" / clip.id / "record.json").read_text()) for clip in (first, second)]
  assert records[0]["poses"]["used"] == "colmap" and records[0]["poses"]["centre_rms"] < 1e-4
  assert records[0]["poses"]["scale"] == pytest.approx(1 / 3.7, rel=1e-4)
  assert records[1]["poses"] == {"requested": f"colmap:{tmp_path / 'colmap' / second.id}", "used": "conditioning",
                                 "frames": 9, "fallback": "no model"}
  capsys.readouterr()
  other = _eval_flags(converted, branch, dataset, tmp_path / "other", "scene") + ["--lalrm", str(lalrm)]
  assert main(other + ["--poses", "colmap:nowhere"]) == 2
  assert "--poses colmap:nowhere: no such directory" in capsys.readouterr().err


def test_similarity_against_direct_metrics():
  rng = np.random.default_rng(1)
  a, b = rng.uniform(size=(2, 3, 16, 16, 3)).astype(np.float32)
  result = similarity(MetricNetworks(), a, b)
  assert result["psnr"] == pytest.approx(float(np.mean(psnr(a, b))), rel=1e-6)
  assert result["ssim"] == pytest.approx(float(np.mean(ssim(a, b))), rel=1e-6)
  assert "lpips" not in result
