"""Tests for wonderland_jax.io_utils: atomic writes, JSON, video, PNG and image reading."""

from __future__ import annotations

import json
import os
import stat

import imageio.v3 as iio
import numpy as np
import pytest

from wonderland_jax import io_utils
from wonderland_jax.errors import InputFileError, WonderlandError


def _frames(n: int, h: int, w: int, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.uniform(size=(h, w, 3)).astype(np.float32) for _ in range(n)]


def test_atomic_path_replaces_on_success(tmp_path):
  target = tmp_path / "sub" / "scene.ply"
  with io_utils.atomic_path(target) as tmp:
    assert tmp.parent == target.parent and tmp.suffix == ".ply" and tmp.name.startswith(".scene.ply.tmp-")
    tmp.write_text("new")
    assert not target.exists()
  assert target.read_text() == "new"
  assert [p.name for p in target.parent.iterdir()] == ["scene.ply"]


def test_atomic_path_failure_leaves_nothing_and_keeps_old_file(tmp_path):
  fresh, old = tmp_path / "fresh.json", tmp_path / "old.json"
  old.write_text("old")
  for target in (fresh, old):
    with pytest.raises(RuntimeError), io_utils.atomic_path(target) as tmp:
      tmp.write_text("partial")
      raise RuntimeError("boom")
  assert not fresh.exists()
  assert old.read_text() == "old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]


def test_write_json(tmp_path):
  path = tmp_path / "a" / "meta.json"
  io_utils.write_json(path, {"x": np.float32(1.5), "v": np.arange(3)})
  assert json.loads(path.read_text()) == {"x": 1.5, "v": [0, 1, 2]}
  assert path.read_text().startswith('{\n  "x"')


def test_write_video_mp4_odd_size_is_padded_to_even(tmp_path):
  path = tmp_path / "out.mp4"
  io_utils.write_video(path, iter(_frames(5, 17, 33)), fps=10)
  video = iio.imread(path, plugin="FFMPEG")  # all frames
  assert video.shape == (5, 18, 34, 3)
  assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_write_video_mp4_even_size_content(tmp_path):
  path = tmp_path / "out.mp4"
  frames = [np.full((32, 48, 3), v, np.uint8) for v in (0, 128, 255)]
  io_utils.write_video(path, frames, fps=5)
  video = iio.imread(path, plugin="FFMPEG")
  assert video.shape == (3, 32, 48, 3)
  np.testing.assert_allclose(video.mean(axis=(1, 2, 3)), [0, 128, 255], atol=3)


def test_write_video_gif(tmp_path):
  path = tmp_path / "out.gif"
  io_utils.write_video(path, _frames(4, 17, 33), fps=10)
  assert iio.imread(path, index=None).shape == (4, 17, 33, 3)


def test_write_video_errors(tmp_path):
  with pytest.raises(WonderlandError, match=r"out\.avi.*unsupported video extension"):
    io_utils.write_video(tmp_path / "out.avi", _frames(2, 8, 8))
  with pytest.raises(ValueError, match="no frames"):
    io_utils.write_video(tmp_path / "out.mp4", [])
  with pytest.raises(ValueError, match="shape"):
    io_utils.write_video(tmp_path / "out.mp4", _frames(1, 8, 8) + _frames(1, 8, 10))
  assert list(tmp_path.iterdir()) == []


def test_png_round_trip_and_sequence(tmp_path):
  image = _frames(1, 9, 7)[0]
  io_utils.write_png(tmp_path / "a.png", image)
  np.testing.assert_allclose(io_utils.read_image(tmp_path / "a.png"), image, atol=0.5 / 255 + 1e-6)
  paths = io_utils.write_png_sequence(tmp_path / "seq", _frames(3, 4, 5))
  assert [p.name for p in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
  assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == [p.name for p in paths]


def test_read_image_drops_alpha_and_expands_gray(tmp_path):
  rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
  iio.imwrite(tmp_path / "rgba.png", rgba)
  out = io_utils.read_image(tmp_path / "rgba.png")
  assert out.dtype == np.float32 and out.shape == (6, 5, 3)
  np.testing.assert_allclose(out, rgba[..., :3] / 255.0, atol=1e-6)
  gray = np.arange(30, dtype=np.uint8).reshape(6, 5)
  iio.imwrite(tmp_path / "gray.png", gray)
  np.testing.assert_allclose(io_utils.read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, 2) / 255.0)


def test_read_image_errors(tmp_path):
  with pytest.raises(InputFileError, match="missing.png.*not found"):
    io_utils.read_image(tmp_path / "missing.png")
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image at all")
  with pytest.raises(InputFileError, match="bad.png.*cannot read image"):
    io_utils.read_image(bad)


def test_atomic_directory_gets_ordinary_permissions(tmp_path):
  umask = os.umask(0o022)
  try:
    with io_utils.atomic_directory(tmp_path / "out") as staging:
      (staging / "a.txt").write_text("x")
  finally:
    os.umask(umask)
  assert (tmp_path / "out" / "a.txt").read_text() == "x"
  assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # not mkdtemp's 0700
