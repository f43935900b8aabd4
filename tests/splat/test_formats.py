"""Tests for wonderland_jax.splat.formats: antimatter15 .splat files, `load_scene` dispatch and refusals."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from wonderland_jax.errors import InputFileError
from wonderland_jax.splat import Gaussians, load_ply, load_scene, load_splat, save_ply
from wonderland_jax.splat.sh import SH_C0


def _random_splat_scene(n: int, seed: int) -> dict[str, np.ndarray]:
  """Stored .ply values (log scales, logits, f_dc, wxyz rotations) with colours inside [0, 1]."""
  rng = np.random.default_rng(seed)
  rot = rng.normal(size=(n, 4))
  rot[0] = [1.0, 0.0, 0.0, 0.0]  # a component of exactly 1 is clipped to byte 255
  rot[1] = [-0.2, 0.5, -0.7, 0.1]  # negative w is stored as given
  return dict(xyz=rng.normal(size=(n, 3)).astype(np.float32), log_scale=rng.uniform(-6.0, 1.0, (n, 3)),
              rot=rot, f_dc=rng.uniform(-0.45, 0.45, (n, 3)) / SH_C0, opacity=rng.normal(scale=3.0, size=n))


def _write_splat(path, scene: dict[str, np.ndarray]) -> np.ndarray:
  """Writes `scene` record by record in antimatter15's layout, as its convert.py does (sorted by decreasing
  volume * opacity, bytes truncated); returns the order written."""
  opacity = 1.0 / (1.0 + np.exp(-scene["opacity"]))
  order = np.argsort(-np.exp(scene["log_scale"].sum(1)) * opacity)
  with open(path, "wb") as f:
    for i in order:
      rgba = np.clip(np.append(0.5 + SH_C0 * scene["f_dc"][i], opacity[i]) * 255, 0, 255).astype(np.uint8)
      rot = np.clip(scene["rot"][i] / np.linalg.norm(scene["rot"][i]) * 128 + 128, 0, 255).astype(np.uint8)
      f.write(struct.pack("<3f3f4B4B", *scene["xyz"][i], *np.exp(scene["log_scale"][i]), *rgba, *rot))
  return order


def test_splat_read_back_within_the_8_bit_quantisation(tmp_path):
  n = 40
  scene = _random_splat_scene(n, seed=0)
  path = tmp_path / "scene.splat"
  order = _write_splat(path, scene)
  assert path.stat().st_size == 32 * n
  for g in (load_splat(path), load_scene(path)):
    assert isinstance(g, Gaussians) and g.num == n and g.sh is None and g.means.dtype == np.float32
    np.testing.assert_array_equal(g.means, scene["xyz"][order])  # float32, exact
    np.testing.assert_allclose(g.scales, np.exp(scene["log_scale"][order]), rtol=1e-6)  # linear float32
    opacity = 1.0 / (1.0 + np.exp(-scene["opacity"][order]))
    assert np.all(np.abs(np.asarray(g.opacities) - opacity) <= 1 / 255 + 1e-6)
    colors = 0.5 + SH_C0 * scene["f_dc"][order]
    assert np.all(np.abs(np.asarray(g.colors) - colors) <= 1 / 255 + 1e-6)
    quats = np.asarray(g.quats, np.float64)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, rtol=1e-6)
    expected = scene["rot"][order] / np.linalg.norm(scene["rot"][order], axis=1, keepdims=True)
    sign = np.sign(np.sum(quats * expected, axis=1, keepdims=True))  # q and -q are one rotation
    np.testing.assert_allclose(quats * sign, expected, atol=2.5 / 128)
    assert np.all(np.abs(np.sum(quats * expected, axis=1)) > 0.999)
  g = load_splat(path)
  first = int(np.flatnonzero(order == 0)[0])
  np.testing.assert_allclose(g.quats[first], [1.0, 0.0, 0.0, 0.0], atol=1e-6)
  negative_w = int(np.flatnonzero(order == 1)[0])
  assert g.quats[negative_w, 0] < 0 and g.quats[negative_w, 2] < -0.7  # wxyz order, sign kept


def test_splat_degenerate_records_and_bad_files(tmp_path):
  path = tmp_path / "edge.splat"
  path.write_bytes(struct.pack("<3f3f4B4B", 1.0, 2.0, 3.0, 0.0, 0.5, 1.0, 255, 0, 128, 0, 128, 128, 128, 128))
  g = load_splat(path)
  np.testing.assert_allclose(g.quats, [[1.0, 0.0, 0.0, 0.0]])  # all-128 rotation: the identity
  np.testing.assert_allclose(g.scales, [[1e-12, 0.5, 1.0]], rtol=1e-6)  # a zero scale, renderable
  np.testing.assert_allclose(g.colors, [[1.0, 0.0, 128 / 255]], rtol=1e-6)
  np.testing.assert_allclose(g.opacities, [0.0])
  garbage = tmp_path / "garbage.splat"
  garbage.write_bytes(path.read_bytes() + b"\x90")
  with pytest.raises(InputFileError, match=r"garbage\.splat.*33 bytes.*multiple of 32"):
    load_scene(garbage)
  empty = tmp_path / "empty.splat"
  empty.write_bytes(b"")
  with pytest.raises(InputFileError, match=r"empty\.splat.*no Gaussians"):
    load_splat(empty)
  nan = tmp_path / "nan.splat"
  nan.write_bytes(struct.pack("<3f3f4B4B", np.nan, 0, 0, 1, 1, 1, 0, 0, 0, 0, 255, 128, 128, 128))
  with pytest.raises(InputFileError, match=r"nan\.splat.*non-finite means"):
    load_splat(nan)
  with pytest.raises(InputFileError, match=r"missing\.splat.*not found"):
    load_splat(tmp_path / "missing.splat")
  # The reported symptom: a .splat given to the .ply reader now says what it is not, naming the file.
  with pytest.raises(InputFileError, match=r"edge\.splat: not a \.ply file.*load_scene"):
    load_ply(path)


@pytest.mark.parametrize("suffix", [".spz", ".ksplat", ".sog", ".lcc", ".SPZ"])
def test_other_formats_are_refused_by_name_with_a_converter(tmp_path, suffix):
  path = tmp_path / f"shared{suffix}"
  path.write_bytes(b"\x1f\x8b\x08\x00 whatever is inside")
  with pytest.raises(InputFileError) as error:
    load_scene(path)
  message = str(error.value)
  assert message.startswith(f"{path}: {suffix.lower()} (") and "is not supported" in message
  assert f"`npx @playcanvas/splat-transform shared{suffix} shared.ply`" in message
  assert "\n" not in message


def test_load_scene_reads_ply_by_header_and_refuses_unknown_suffixes(tmp_path):
  rng = np.random.default_rng(3)
  g = Gaussians(means=rng.normal(size=(6, 3)), quats=rng.normal(size=(6, 4)), scales=rng.uniform(0.1, 1, (6, 3)),
                opacities=rng.uniform(size=6), colors=rng.uniform(size=(6, 3)))
  save_ply(tmp_path / "scene.ply", g)
  np.testing.assert_allclose(load_scene(tmp_path / "scene.ply").means, g.means, rtol=1e-6)
  misnamed = tmp_path / "scene.bin"
  misnamed.write_bytes((tmp_path / "scene.ply").read_bytes())
  np.testing.assert_allclose(load_scene(misnamed).scales, g.scales, rtol=1e-6)
  unknown = tmp_path / "scene.xyz"
  unknown.write_bytes(b"1 2 3\n")
  with pytest.raises(InputFileError, match=r"scene\.xyz: unknown scene format '\.xyz'.*\.ply.*\.splat"):
    load_scene(unknown)
  with pytest.raises(InputFileError, match=r"nothere\.spz: scene file not found"):
    load_scene(tmp_path / "nothere.spz")
  bad_ply = tmp_path / "bad.ply"
  bad_ply.write_bytes(b"\x90\x00 not ply")
  with pytest.raises(InputFileError, match=r"bad\.ply: not a \.ply file"):
    load_scene(bad_ply)
