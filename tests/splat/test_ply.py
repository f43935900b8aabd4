"""Tests for wonderland_jax.splat.ply: the standard 3DGS .ply layout, round trips and errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import plyfile
import pytest
from numpy.lib.recfunctions import repack_fields

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


# SuperSplat / splat-transform compressed .ply, encoded here as its published writer packs it.

CHUNK = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x", "min_scale_y", "min_scale_z",
         "max_scale_x", "max_scale_y", "max_scale_z"]
CHUNK_COLOURS = ["min_r", "min_g", "min_b", "max_r", "max_g", "max_b"]


def _pack_unorm(value: np.ndarray, bits: int) -> np.ndarray:
  top = (1 << bits) - 1
  return np.clip(np.floor(value * top + 0.5), 0, top).astype(np.uint32)


def _normalise(value: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
  span = high - low
  t = np.where(span < 1e-5, 0.0, (value - low) / np.where(span < 1e-5, 1.0, span))
  return np.where(value <= low, 0.0, np.where(value >= high, 1.0, t))


def _pack_111011(t: np.ndarray) -> np.ndarray:
  return (_pack_unorm(t[:, 0], 11) << 21) | (_pack_unorm(t[:, 1], 10) << 11) | _pack_unorm(t[:, 2], 11)


def _pack_rotation(rot: np.ndarray) -> np.ndarray:
  """'smallest three': index of the largest |component| in bits 30-31, the others (sign made so that the
  largest is positive) as 10-bit unorms of q * sqrt(2) / 2 + 0.5, in index order from bit 20 down."""
  q = rot / np.linalg.norm(rot, axis=1, keepdims=True)
  largest = np.abs(q).argmax(1)
  q = q * np.where(q[np.arange(len(q)), largest] < 0, -1.0, 1.0)[:, None]
  packed = largest.astype(np.uint32)
  for i in range(4):
    others = largest != i
    packed = np.where(others, (packed << 10) | _pack_unorm(q[:, i] * np.sqrt(2) * 0.5 + 0.5, 10), packed)
  return packed


def _write_compressed(path, columns: dict[str, np.ndarray], k: int, chunk_colours: bool = True) -> dict:
  """Writes 3DGS .ply values (`x`.., log `scale_*`, `f_dc_*`, logit `opacity`, `rot_*`, `f_rest_*`) as a
  compressed .ply: chunks of 256 with float32 ranges, uint32 packed vertices, uint8 SH. Returns the chunk
  ranges (name -> (num_chunks,))."""
  n = len(columns["x"])
  num_chunks = -(-n // 256)
  of_chunk = np.arange(n) // 256
  colours = {c: 0.5 + SH_C0 * columns[f"f_dc_{i}"] for i, c in enumerate("rgb")}
  values = {"x": columns["x"], "y": columns["y"], "z": columns["z"],
            **{f"scale_{a}": columns[f"scale_{i}"] for i, a in enumerate("xyz")}, **colours}
  ranges = {}
  for name, value in values.items():
    ranges[f"min_{name}"] = np.array([value[of_chunk == c].min() for c in range(num_chunks)], np.float32)
    ranges[f"max_{name}"] = np.array([value[of_chunk == c].max() for c in range(num_chunks)], np.float32)
    if name.startswith("scale"):
      ranges[f"min_{name}"], ranges[f"max_{name}"] = (np.clip(ranges[f"{e}_{name}"], -20, 20) for e in ("min", "max"))

  def t(name):
    return _normalise(values[name], ranges[f"min_{name}"][of_chunk], ranges[f"max_{name}"][of_chunk])

  rgb = np.stack([t(c) if chunk_colours else colours[c] for c in "rgb"], 1)
  alpha = 1.0 / (1.0 + np.exp(-columns["opacity"]))
  packed_color = ((_pack_unorm(rgb[:, 0], 8) << 24) | (_pack_unorm(rgb[:, 1], 8) << 16)
                  | (_pack_unorm(rgb[:, 2], 8) << 8) | _pack_unorm(alpha, 8))
  chunk_names = CHUNK + (CHUNK_COLOURS if chunk_colours else [])
  chunk = np.empty(num_chunks, dtype=[(name, "<f4") for name in chunk_names])
  for name in chunk_names:
    chunk[name] = ranges[name]
  vertex = np.empty(n, dtype=[(name, "<u4") for name in ("packed_position", "packed_rotation", "packed_scale",
                                                            "packed_color")])
  vertex["packed_position"] = _pack_111011(np.stack([t(a) for a in "xyz"], 1))
  vertex["packed_rotation"] = _pack_rotation(np.stack([columns[f"rot_{i}"] for i in range(4)], 1))
  vertex["packed_scale"] = _pack_111011(np.stack([t(f"scale_{a}") for a in "xyz"], 1))
  vertex["packed_color"] = packed_color
  elements = [plyfile.PlyElement.describe(chunk, "chunk"), plyfile.PlyElement.describe(vertex, "vertex")]
  if k:
    sh = np.empty(n, dtype=[(f"f_rest_{i}", "u1") for i in range(3 * k)])
    for i in range(3 * k):
      sh[f"f_rest_{i}"] = np.clip(np.trunc((columns[f"f_rest_{i}"] / 8 + 0.5) * 256), 0, 255)
    elements.append(plyfile.PlyElement.describe(sh, "sh"))
  plyfile.PlyData(elements, text=False, byte_order="<").write(str(path))
  return ranges


def _stored_columns(n: int, k: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  columns = {a: rng.normal(scale=s, size=n) for a, s in zip("xyz", (1.0, 3.0, 0.5))}
  columns |= {f"scale_{i}": rng.uniform(-7.0, 0.5, n) for i in range(3)}
  columns |= {f"f_dc_{i}": rng.uniform(-0.5, 0.5, n) / SH_C0 for i in range(3)}
  columns |= {f"rot_{i}": rng.normal(size=n) for i in range(4)}
  columns |= {f"f_rest_{i}": rng.uniform(-3.9, 3.9, n) for i in range(3 * k)}
  columns["opacity"] = rng.normal(scale=3.0, size=n)
  return columns


@pytest.mark.parametrize("k,chunk_colours", [(0, True), (3, True), (15, False)])
def test_compressed_ply_read_back_within_the_quantisation(tmp_path, k, chunk_colours):
  n = 300  # two chunks, the second partial
  columns = _stored_columns(n, k, seed=k)
  path = tmp_path / "scene.compressed.ply"
  ranges = _write_compressed(path, columns, k, chunk_colours)
  of_chunk = np.arange(n) // 256
  g = load_ply(path)
  assert g.num == n and g.sh_degree == {0: 0, 3: 1, 15: 3}[k] and g.means.dtype == jnp.float32

  def step(name, bits):  # one quantisation step of a chunk-ranged quantity, per Gaussian
    return (ranges[f"max_{name}"] - ranges[f"min_{name}"])[of_chunk] / ((1 << bits) - 1)

  for axis, (a, bits) in enumerate(zip("xyz", (11, 10, 11))):
    assert np.all(np.abs(np.asarray(g.means[:, axis], np.float64) - columns[a]) <= 0.5 * step(a, bits) + 1e-6), a
    log_error = np.abs(np.log(np.asarray(g.scales[:, axis], np.float64)) - columns[f"scale_{axis}"])
    assert np.all(log_error <= 0.5 * step(f"scale_{a}", bits) + 1e-5), f"scale_{axis}"
    colour = 0.5 + SH_C0 * columns[f"f_dc_{axis}"]
    colour_step = step("rgb"[axis], 8) if chunk_colours else 1 / 255
    assert np.all(np.abs(np.asarray(g.colors[:, axis], np.float64) - colour) <= 0.5 * colour_step + 1e-6)
  opacity = 1.0 / (1.0 + np.exp(-columns["opacity"]))
  assert np.all(np.abs(np.asarray(g.opacities) - opacity) <= 0.5 / 255 + 1e-6)
  rot = np.stack([columns[f"rot_{i}"] for i in range(4)], 1)
  rot /= np.linalg.norm(rot, axis=1, keepdims=True)
  quats = np.asarray(g.quats, np.float64)
  np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=3e-3)
  quats *= np.sign(np.sum(quats * rot, axis=1, keepdims=True))  # q and -q are one rotation
  np.testing.assert_allclose(quats, rot, atol=3e-3)  # 10 bits over [-1/sqrt(2), 1/sqrt(2)]
  if k:
    rest = np.stack([columns[f"f_rest_{i}"] for i in range(3 * k)], 1).reshape(n, 3, k).transpose(0, 2, 1)
    np.testing.assert_allclose(g.sh, rest, atol=0.5 * 8 / 256 + 1e-6)


def test_compressed_ply_bit_layout(tmp_path):
  """One hand-packed Gaussian: the fields sit where the published layout puts them."""
  chunk = np.zeros(1, dtype=[(name, "<f4") for name in CHUNK])
  chunk["max_x"], chunk["max_y"], chunk["max_z"] = 2.0, 4.0, 8.0
  chunk["min_scale_x"] = chunk["min_scale_y"] = chunk["min_scale_z"] = -2.0
  vertex = np.zeros(1, dtype=[(name, "<u4") for name in ("packed_position", "packed_rotation", "packed_scale",
                                                            "packed_color")])
  vertex["packed_position"] = (2047 << 21) | (0 << 11) | 1023  # x = max, y = min, z = 1023 / 2047 of the range
  vertex["packed_rotation"] = (2 << 30) | (512 << 20) | (1023 << 10) | 0  # largest: rot_2; rot_0 ~ 0, rot_1, rot_3
  vertex["packed_scale"] = (0 << 21) | (1023 << 11) | 2047  # log scales -2, 0 (max), 0 (max)
  vertex["packed_color"] = (255 << 24) | (0 << 16) | (51 << 8) | 204  # no chunk colours: r, g, b, opacity
  path = tmp_path / "one.ply"
  plyfile.PlyData([plyfile.PlyElement.describe(chunk, "chunk"), plyfile.PlyElement.describe(vertex, "vertex")],
                  byte_order="<").write(str(path))
  g = load_ply(path)
  np.testing.assert_allclose(g.means, [[2.0, 0.0, 8.0 * 1023 / 2047]], rtol=1e-6)
  np.testing.assert_allclose(g.scales, [[np.exp(-2.0), 1.0, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(g.colors, [[1.0, 0.0, 0.2]], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g.opacities, [0.8], rtol=1e-6)
  a, b = (512 / 1023 - 0.5) * np.sqrt(2), 0.5 * np.sqrt(2)
  c = -0.5 * np.sqrt(2)
  np.testing.assert_allclose(g.quats, [[a, b, np.sqrt(max(0.0, 1 - a * a - b * b - c * c)), c]], atol=1e-6)


def test_compressed_ply_errors_name_the_file_and_the_fault(tmp_path):
  columns = _stored_columns(10, 0, seed=5)
  good = tmp_path / "good.ply"
  _write_compressed(good, columns, 0)
  data = plyfile.PlyData.read(str(good))
  chunk, vertex = data["chunk"].data, data["vertex"].data

  def write(name, *elements):
    path = tmp_path / name
    plyfile.PlyData([plyfile.PlyElement.describe(e, n) for n, e in elements], byte_order="<").write(str(path))
    return path

  with pytest.raises(InputFileError, match=r"nochunk\.ply.*no 'chunk' element"):
    load_ply(write("nochunk.ply", ("vertex", vertex)))
  partial = repack_fields(vertex[["packed_position", "packed_rotation", "packed_color"]])
  with pytest.raises(InputFileError, match=r"partial\.ply.*lacks the properties packed_scale"):
    load_ply(write("partial.ply", ("chunk", chunk), ("vertex", partial)))
  with pytest.raises(InputFileError, match=r"chunks\.ply.*2 chunks for 10 Gaussians, expected 1"):
    load_ply(write("chunks.ply", ("chunk", np.concatenate([chunk, chunk])), ("vertex", vertex)))
  names = [name for name in chunk.dtype.names if name not in ("max_z", "min_g")]
  with pytest.raises(InputFileError, match=r"ranges\.ply.*chunk element lacks the properties max_z, min_g"):
    load_ply(write("ranges.ply", ("chunk", repack_fields(chunk[names])), ("vertex", vertex)))
  sh = np.zeros(10, dtype=[(f"f_rest_{i}", "u1") for i in range(6)])
  with pytest.raises(InputFileError, match=r"sh6\.ply.*sh element"):
    load_ply(write("sh6.ply", ("chunk", chunk), ("vertex", vertex), ("sh", sh)))
