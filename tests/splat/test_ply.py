"""Tests for wonderland_jax.splat.ply: the standard 3DGS .ply layout, round trips and errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import plyfile
import pytest

from wonderland_jax.errors import InputFileError, OutputError, WonderlandError
from wonderland_jax.splat import Gaussians, load_ply, save_ply
from wonderland_jax.splat.ply import SH_C0

BASE = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _random_gaussians(n: int, k: int, seed: int) -> Gaussians:
  rng = np.random.default_rng(seed)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  return Gaussians(
    means=f32(rng.normal(size=(n, 3))),
    quats=f32(rng.normal(size=(n, 4))),
    scales=f32(rng.uniform(1e-3, 2.0, (n, 3))),
    opacities=f32(rng.uniform(0.01, 0.99, n)),
    colors=f32(rng.uniform(size=(n, 3))),
    sh=f32(rng.normal(scale=0.3, size=(n, k, 3))) if k else None,
  )


def _header_properties(path) -> tuple[list[str], list[str]]:
  """Returns (header lines before the properties, property names) parsed from the raw header bytes."""
  raw = path.read_bytes()
  header = raw[: raw.index(b"end_header\n")].decode("ascii").splitlines()
  props = [line.split() for line in header if line.startswith("property")]
  assert all(p[1] == "float" for p in props), props
  return [line for line in header if not line.startswith("property")], [p[2] for p in props]


def _write_vertex(path, columns: dict[str, np.ndarray], text: bool = False) -> None:
  n = len(next(iter(columns.values())))
  vertices = np.empty(n, dtype=[(name, col.dtype.str) for name, col in columns.items()])
  for name, col in columns.items():
    vertices[name] = col
  plyfile.PlyData([plyfile.PlyElement.describe(vertices, "vertex")], text=text).write(str(path))


@pytest.mark.parametrize("degree,k", [(0, 0), (1, 3), (2, 8), (3, 15)])
def test_round_trip(tmp_path, degree, k):
  g = _random_gaussians(50, k, seed=degree)
  path = tmp_path / "scene.ply"
  save_ply(path, g)
  h = load_ply(path)
  assert h.sh_degree == degree
  for name in ("means", "quats", "scales", "opacities", "colors", "sh"):
    a, b = getattr(g, name), getattr(h, name)
    if a is None:
      assert b is None
      continue
    assert b.dtype == jnp.float32 and b.shape == a.shape
    np.testing.assert_allclose(b, a, rtol=2e-6, atol=2e-7, err_msg=name)
  lines, props = _header_properties(path)
  assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 50"]
  assert props == BASE + [f"f_rest_{i}" for i in range(3 * k)] + TAIL


def test_stored_values_and_channel_major_f_rest(tmp_path):
  k = 3
  sh = np.arange(k * 3, dtype=np.float32).reshape(1, k, 3) + 100.0  # sh[0, k, c] = 100 + 3k + c
  g = Gaussians(means=jnp.array([[1.0, 2.0, 3.0]]), quats=jnp.array([[0.5, 0.1, 0.2, 0.3]]),
                scales=jnp.array([[1.0, 0.5, 0.0]]), opacities=jnp.array([1.0]),
                colors=jnp.array([[0.5, 1.0, 0.0]]), sh=jnp.asarray(sh))
  path = tmp_path / "known.ply"
  save_ply(path, g)
  v = plyfile.PlyData.read(str(path))["vertex"]
  for c in range(3):
    for kk in range(k):
      assert v[f"f_rest_{c * k + kk}"][0] == sh[0, kk, c]
  np.testing.assert_allclose([v[f"rot_{i}"][0] for i in range(4)], [0.5, 0.1, 0.2, 0.3])
  np.testing.assert_allclose([v[f"f_dc_{i}"][0] for i in range(3)], [0.0, 0.5 / SH_C0, -0.5 / SH_C0], rtol=1e-6)
  np.testing.assert_allclose([v[f"scale_{i}"][0] for i in range(3)], [0.0, np.log(0.5), np.log(1e-12)], rtol=1e-6)
  np.testing.assert_allclose(v["opacity"][0], np.log((1 - 1e-6) / 1e-6), rtol=1e-5)  # clipped, finite
  assert [v[n][0] for n in ("nx", "ny", "nz")] == [0.0, 0.0, 0.0]


def test_load_other_order_extra_properties_ascii_and_f_rest_sorting(tmp_path):
  n, k = 4, 8
  rng = np.random.default_rng(7)
  rest = rng.normal(size=(n, 3 * k))
  columns = {"red": np.full(n, 7, np.uint8), "rot_3": rng.normal(size=n), "rot_0": rng.normal(size=n)}
  # f_rest in lexicographic order (f_rest_10 before f_rest_2): loading must sort by the integer suffix.
  for i in sorted(range(3 * k), key=str):
    columns[f"f_rest_{i}"] = rest[:, i].astype(np.float32)
  for name in ["scale_2", "z", "f_dc_2", "opacity", "rot_1", "scale_0", "x", "f_dc_0", "rot_2",
               "scale_1", "y", "f_dc_1", "extra_attr"]:
    columns[name] = rng.normal(size=n)  # float64 ("double") properties
  for text in (False, True):
    path = tmp_path / f"custom_{text}.ply"
    _write_vertex(path, columns, text=text)
    g = load_ply(path)
    assert g.sh.shape == (n, k, 3) and g.sh.dtype == jnp.float32
    np.testing.assert_allclose(g.sh, rest.reshape(n, 3, k).transpose(0, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(g.quats, np.stack([columns[f"rot_{i}"] for i in range(4)], 1), rtol=1e-6)
    np.testing.assert_allclose(g.means, np.stack([columns[c] for c in "xyz"], 1), rtol=1e-6)
    np.testing.assert_allclose(g.scales, np.exp(np.stack([columns[f"scale_{i}"] for i in range(3)], 1)), rtol=1e-6)
    np.testing.assert_allclose(g.opacities, 1 / (1 + np.exp(-columns["opacity"])), rtol=1e-6)
    np.testing.assert_allclose(g.colors, 0.5 + SH_C0 * np.stack([columns[f"f_dc_{i}"] for i in range(3)], 1),
                               rtol=1e-6)


def test_missing_properties_error_names_them(tmp_path):
  names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "rot_0", "rot_1",
           "rot_2"]
  path = tmp_path / "incomplete.ply"
  _write_vertex(path, {name: np.zeros(2, np.float32) for name in names})
  with pytest.raises(InputFileError, match=r"incomplete\.ply.*scale_2, rot_3"):
    load_ply(path)


def test_bad_f_rest_count(tmp_path):
  names = BASE + ["f_rest_0", "f_rest_1", "f_rest_2"] + TAIL
  path = tmp_path / "rest3.ply"
  _write_vertex(path, {name: np.zeros(2, np.float32) for name in names})
  with pytest.raises(InputFileError, match=r"rest3\.ply.*f_rest"):
    load_ply(path)


def test_garbage_truncated_and_missing_files(tmp_path):
  garbage = tmp_path / "garbage.ply"
  garbage.write_bytes(b"\x89PNG not a ply file\x00\xff")
  with pytest.raises(InputFileError, match=r"garbage\.ply"):
    load_ply(garbage)
  good = tmp_path / "good.ply"
  save_ply(good, _random_gaussians(10, 3, seed=0))
  truncated = tmp_path / "truncated.ply"
  truncated.write_bytes(good.read_bytes()[:-10])
  with pytest.raises(InputFileError, match=r"truncated\.ply"):
    load_ply(truncated)
  with pytest.raises(InputFileError, match=r"nothere\.ply.*not found"):
    load_ply(tmp_path / "nothere.ply")


def test_save_requires_rgb_and_failing_write_leaves_no_file(tmp_path):
  g = _random_gaussians(5, 0, seed=1)
  path = tmp_path / "out.ply"
  with pytest.raises(WonderlandError, match="RGB"):
    save_ply(path, g.replace(colors=jnp.zeros((5, 4))))
  with pytest.raises(WonderlandError, match="quats"):
    save_ply(path, g.replace(quats=jnp.zeros((4, 4))))
  assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "scene.ply"
  path.write_bytes(b"old")

  def fail(self, stream):
    with open(stream, "wb") as f:
      f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(plyfile.PlyData, "write", fail)
  with pytest.raises(OutputError, match="disk full"):
    save_ply(path, _random_gaussians(5, 3, seed=2))
  assert path.read_bytes() == b"old"
  assert [p.name for p in tmp_path.iterdir()] == ["scene.ply"]
