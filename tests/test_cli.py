"""The `wonderland` CLI: render end to end on tiny inputs, and its errors (the demo: tests/demo/)."""

import imageio.v3 as iio
import numpy as np
import pytest

from tests.helpers import splat_reference as reference
from tests.helpers.gaussians import to_gaussians
from wonderland_jax.camera import PoseSequence, make_trajectory, write_realestate10k
from wonderland_jax.cli import main
from wonderland_jax.splat import load_ply, save_ply
from wonderland_jax.splat.formats import SPLAT_RECORD


@pytest.fixture
def scene_ply(tmp_path):
  scene = reference.random_scene(np.random.default_rng(0), 150, sh_degree=1)
  path = tmp_path / "scene.ply"
  save_ply(path, to_gaussians(scene))
  return path


def test_render_video_and_pngs(tmp_path, scene_ply):
  video, pngs = tmp_path / "out" / "orbit.mp4", tmp_path / "frames"
  assert main(["render", "--ply", str(scene_ply), "--trajectory", "orbit", "--frames", "5", "--size", "32x24",
               "--out", str(video), "--png-dir", str(pngs)]) == 0
  frames = iio.imread(video)
  assert frames.shape == (5, 24, 32, 3)
  written = sorted(p.name for p in pngs.iterdir())
  assert written == [f"frame_{i:05d}.png" for i in range(5)]
  first = iio.imread(pngs / written[0])
  assert first.shape == (24, 32, 3) and first.std() > 1, "the fitted camera should see the scene"


def test_render_along_a_pose_file(tmp_path, scene_ply):
  poses = tmp_path / "poses.txt"
  write_realestate10k(poses, PoseSequence(make_trajectory("dolly", 4, width=40, height=30), list("abcd")))
  pngs = tmp_path / "frames"
  assert main(["render", "--ply", str(scene_ply), "--trajectory", str(poses), "--size", "20x16",
               "--png-dir", str(pngs)]) == 0
  assert len(list(pngs.iterdir())) == 4
  assert iio.imread(pngs / "frame_00000.png").shape == (16, 20, 3)


def test_render_reads_splat_files_and_names_unsupported_formats(tmp_path, scene_ply, capsys):
  g = load_ply(scene_ply)
  records = np.zeros(g.num, SPLAT_RECORD)
  records["position"], records["scale"] = g.means, g.scales
  records["rgba"] = np.clip(np.concatenate([g.colors, g.opacities[:, None]], 1) * 255, 0, 255)
  records["rotation"] = np.clip(g.quats / np.linalg.norm(g.quats, axis=1, keepdims=True) * 128 + 128, 0, 255)
  splat = tmp_path / "scene.splat"
  splat.write_bytes(records.tobytes())
  pngs = tmp_path / "frames"
  assert main(["render", "--ply", str(splat), "--frames", "2", "--size", "16x12", "--png-dir", str(pngs)]) == 0
  assert iio.imread(pngs / "frame_00000.png").std() > 1
  spz = tmp_path / "scene.spz"
  spz.write_bytes(b"\x1f\x8b")
  assert main(["render", "--ply", str(spz), "--png-dir", str(tmp_path / "never")]) == 2
  err = capsys.readouterr().err
  assert "scene.spz" in err and "not supported" in err and "splat-transform scene.spz scene.ply" in err


def test_render_errors_name_the_culprit_and_leave_nothing(tmp_path, scene_ply, capsys):
  out = tmp_path / "never.mp4"
  assert main(["render", "--ply", str(tmp_path / "missing.ply"), "--out", str(out)]) == 2
  assert "missing.ply" in capsys.readouterr().err
  garbage = tmp_path / "garbage.ply"
  garbage.write_bytes(b"not a ply at all")
  assert main(["render", "--ply", str(garbage), "--out", str(out)]) == 2
  assert "garbage.ply" in capsys.readouterr().err
  bad_poses = tmp_path / "bad_poses.txt"
  bad_poses.write_text("https://example.com/video\n0 0.5 0.5 0.5 0.5 0 0 1 0 0\n")
  assert main(["render", "--ply", str(scene_ply), "--trajectory", str(bad_poses), "--size", "16x16",
               "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "bad_poses.txt:2" in err and "expected 19 fields" in err
  assert main(["render", "--ply", str(scene_ply), "--trajectory", "loop-the-loop", "--out", str(out)]) == 2
  assert "orbit" in capsys.readouterr().err
  assert main(["render", "--ply", str(scene_ply), "--out", str(tmp_path / "x.avi")]) == 2
  assert ".avi" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    main(["render", "--ply", str(scene_ply), "--size", "big", "--out", str(out)])
  assert exit_info.value.code == 2
  assert not out.exists() and not (tmp_path / "x.avi").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left behind"
