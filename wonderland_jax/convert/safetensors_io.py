"""Read-only access to the safetensors weights of one diffusers / transformers model folder.

    source = open_source("CogVideoX-5b", subfolder="vae")   # a pipeline root, or the model folder itself
    source.config                                           # dict from config.json
    source.keys()                                           # sorted tensor names, e.g. 'encoder.conv_in.conv.weight'
    source.shape(key), source.dtype(key)                    # from the headers, nothing read: (O, I, T, H, W), 'BF16'
    source.read(key)                                        # one tensor, float32 (exact upcast of F16 / BF16)

A model folder holds `config.json` and either one weights file (`diffusion_pytorch_model.safetensors` or
`model.safetensors`) or a sharded checkpoint: `<name>.safetensors.index.json`, whose `weight_map` maps each
tensor name to the shard file holding it. Tensors keep PyTorch's layouts (e.g. conv kernels (O, I, ...));
`wonderland_jax.convert.rules` transposes them.

All headers are parsed and checked when the source is opened (a truncated file, a corrupted header, a missing
shard, a key the index maps to a shard that lacks it, a key stored twice each raise `InputFileError` naming the
file and key), so a bad checkpoint fails before any tensor is read. Tensors are then read one at a time:
dtypes numpy knows through `safetensors.safe_open(..., framework="numpy")`, bfloat16 and float8 (which
safetensors' numpy API cannot return) straight from the file at the offsets the header gives, decoded with
ml_dtypes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors

from wonderland_jax.errors import InputFileError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
# Searched in this order; the first that exists is used. A sharded index wins over a single file beside it, as
# in diffusers (`ModelMixin.from_pretrained` looks for the index first) and transformers: a stale single file
# left by an earlier save would otherwise be read while diffusers reads the shards (a warning says so).
WEIGHTS_NAMES = (
  "diffusion_pytorch_model.safetensors.index.json",
  "diffusion_pytorch_model.safetensors",
  "model.safetensors.index.json",
  "model.safetensors",
)
# safetensors dtype name -> numpy dtype (little-endian, as the format stores it).
DTYPES: dict[str, np.dtype] = {
  "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
  "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
  "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
  "BOOL": np.dtype("bool"),
}
# Dtypes safetensors' numpy API cannot hand out: read from the file directly.
RAW_DTYPES = frozenset({"BF16", "F8_E4M3", "F8_E5M2"})
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class TensorEntry:
  """Where one tensor lives: its file, dtype name, shape and absolute byte range [start, end) in the file."""

  file: Path
  dtype: str
  shape: tuple[int, ...]
  start: int
  end: int


def read_header(file: Path) -> dict[str, TensorEntry]:
  """Parses and checks the header of one .safetensors file; returns {key: TensorEntry}.

  The format: an 8-byte little-endian header size N, N bytes of JSON {key: {"dtype", "shape",
  "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data, offsets relative to its start.
  Raises `InputFileError` naming the file (and key) for a missing / truncated file or a corrupted header.
  """
  try:
    size = file.stat().st_size
    with open(file, "rb") as f:
      prefix = f.read(8)
      if len(prefix) < 8:
        raise InputFileError(f"{file}: not a safetensors file: only {size} bytes (truncated?)")
      (header_size,) = struct.unpack("<Q", prefix)
      if header_size > MAX_HEADER_BYTES:
        raise InputFileError(f"{file}: corrupted safetensors header: it claims {header_size} bytes")
      if 8 + header_size > size:
        raise InputFileError(f"{file}: truncated: the header claims {header_size} bytes but the file has "
                             f"only {size} bytes")
      raw = f.read(header_size)
  except FileNotFoundError:
    raise InputFileError(f"{file}: weights file not found") from None
  except OSError as e:
    raise InputFileError(f"{file}: cannot read: {e}") from e
  try:
    header = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputFileError(f"{file}: corrupted safetensors header (not valid JSON: {e})") from None
  if not isinstance(header, dict):
    raise InputFileError(f"{file}: corrupted safetensors header (a JSON {type(header).__name__}, not an object)")
  data_start = 8 + header_size
  data_size = size - data_start
  entries = {}
  for key, info in header.items():
    if key == "__metadata__":
      continue
    try:
      dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
      valid = (dtype in DTYPES and all(isinstance(d, int) and d >= 0 for d in shape)
               and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end)
    except (TypeError, KeyError, ValueError):
      valid = False
    if not valid:
      raise InputFileError(f"{file}: corrupted safetensors header: bad entry for key {key!r}: {info!r}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != expected:
      raise InputFileError(f"{file}: corrupted safetensors header: key {key!r} ({dtype} {list(shape)}) needs "
                           f"{expected} bytes but its data_offsets span {end - begin}")
    if end > data_size:
      raise InputFileError(f"{file}: truncated: key {key!r} ends at byte {data_start + end} but the file has "
                           f"only {size} bytes")
    entries[key] = TensorEntry(file, dtype, shape, data_start + begin, data_start + end)
  return entries


class TensorSource:
  """A read-only view of one model's weights (one file or the shards of an index); see the module docstring.

  Build it with `open_source`. `path` is the model folder, `files` the weights files (the shards, in name
  order), `config_path` its config.json.
  """

  def __init__(self, path: Path, files: list[Path], entries: Mapping[str, TensorEntry]):
    self.path = path
    self.files = list(files)
    self.config_path = path / CONFIG_NAME
    self._entries = dict(entries)
    self._config: dict | None = None

  def __repr__(self) -> str:
    return f"TensorSource({str(self.path)!r}, {len(self._entries)} tensors in {len(self.files)} file(s))"

  def __len__(self) -> int:
    return len(self._entries)

  def __contains__(self, key: str) -> bool:
    return key in self._entries

  @property
  def config(self) -> dict:
    """The parsed config.json (read once); `InputFileError` naming the file if it is missing or invalid."""
    if self._config is None:
      try:
        config = json.loads(self.config_path.read_text(encoding="utf-8"))
      except FileNotFoundError:
        raise InputFileError(f"{self.config_path}: model config not found") from None
      except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputFileError(f"{self.config_path}: cannot read the model config: {e}") from None
      if not isinstance(config, dict):
        raise InputFileError(f"{self.config_path}: expected a JSON object, got a {type(config).__name__}")
      self._config = config
    return self._config

  def keys(self) -> list[str]:
    """All tensor names, sorted."""
    return sorted(self._entries)

  def entry(self, key: str) -> TensorEntry:
    try:
      return self._entries[key]
    except KeyError:
      raise InputFileError(f"{self.path}: no tensor named {key!r}") from None

  def shape(self, key: str) -> tuple[int, ...]:
    """The tensor's shape as stored (PyTorch layout), from the header."""
    return self.entry(key).shape

  def dtype(self, key: str) -> str:
    """The safetensors dtype name: 'F32', 'F16', 'BF16', ..."""
    return self.entry(key).dtype

  def file(self, key: str) -> Path:
    """The file holding `key`."""
    return self.entry(key).file

  def read_raw(self, key: str) -> np.ndarray:
    """Reads one tensor in its stored dtype (BF16 as `ml_dtypes.bfloat16`, ...), in the stored layout."""
    entry = self.entry(key)
    if entry.dtype in RAW_DTYPES:
      try:
        with open(entry.file, "rb") as f:
          f.seek(entry.start)
          data = f.read(entry.end - entry.start)
      except OSError as e:
        raise InputFileError(f"{entry.file}: cannot read key {key!r}: {e}") from e
      if len(data) != entry.end - entry.start:
        raise InputFileError(f"{entry.file}: truncated while reading key {key!r}")
      return np.frombuffer(data, dtype=DTYPES[entry.dtype]).reshape(entry.shape)
    try:
      with safetensors.safe_open(entry.file, framework="numpy") as f:
        array = f.get_tensor(key)
    except (safetensors.SafetensorError, OSError) as e:
      raise InputFileError(f"{entry.file}: cannot read key {key!r}: {e}") from e
    if array.shape != entry.shape:  # The file changed since it was opened.
      raise InputFileError(f"{entry.file}: key {key!r} has shape {array.shape}, its header said {entry.shape}")
    return array

  def read(self, key: str) -> np.ndarray:
    """Reads one tensor as float32 (stored layout). F16 / BF16 / F8 upcast exactly; F64 rounds."""
    return np.asarray(self.read_raw(key), dtype=np.float32)


def _find_model_folder(path: Path, subfolder: str | None) -> Path:
  if not path.exists():
    raise InputFileError(f"{path}: model folder not found")
  if not path.is_dir():
    raise InputFileError(f"{path}: not a directory (expected a diffusers model or pipeline folder)")
  if subfolder and (path / subfolder).is_dir():
    return path / subfolder
  if not subfolder or (path / CONFIG_NAME).is_file():
    return path
  raise InputFileError(f"{path}: neither a pipeline root with a {subfolder}/ folder nor a model folder "
                       f"with a {CONFIG_NAME}")


def _read_index(index_file: Path) -> dict[str, str]:
  try:
    index = json.loads(index_file.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise InputFileError(f"{index_file}: cannot read the shard index: {e}") from None
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise InputFileError(f"{index_file}: expected a JSON object with a 'weight_map' of tensor name -> shard file")
  return weight_map


def _sharded_entries(folder: Path, index_file: Path) -> tuple[list[Path], dict[str, TensorEntry]]:
  weight_map = _read_index(index_file)
  shard_names = sorted(set(weight_map.values()))
  missing = [name for name in shard_names if not (folder / name).is_file()]
  if missing:
    raise InputFileError(f"{index_file}: shard(s) listed in the index do not exist in {folder}: "
                         f"{', '.join(missing)}")
  files = [folder / name for name in shard_names]
  headers = {name: read_header(folder / name) for name in shard_names}
  absent = [f"{key!r} (in {name})" for key, name in sorted(weight_map.items()) if key not in headers[name]]
  if absent:
    raise InputFileError(f"{index_file}: {len(absent)} key(s) mapped to shards that do not contain them: "
                         + ", ".join(absent[:20]) + (f", ... ({len(absent) - 20} more)" if len(absent) > 20 else ""))
  entries, unlisted = {}, []
  for name in shard_names:
    for key, entry in headers[name].items():
      if key in entries:
        raise InputFileError(f"{index_file}: key {key!r} is stored in two files: {entries[key].file.name} and "
                             f"{name}")
      entries[key] = entry
      if key not in weight_map:
        unlisted.append(key)
  if unlisted:
    logger.warning("%s: %d tensor(s) in the shards are not listed in the index (used anyway): %s", index_file,
                   len(unlisted), ", ".join(unlisted[:10]))
  return files, entries


def open_source(path: str | os.PathLike, subfolder: str | None = None) -> TensorSource:
  """Opens the weights of a diffusers / transformers model folder; see the module docstring.

  Args:
    path: the model folder, or a pipeline root holding the model in `subfolder`.
    subfolder: e.g. "vae"; used when `path/subfolder` is a directory, else `path` must hold a config.json.

  Reads and checks every header (no tensor data). Raises `InputFileError` naming the folder, file and key
  for a missing folder / weights file, a truncated file, a corrupted header or an inconsistent shard index.
  """
  folder = _find_model_folder(Path(path), subfolder)
  for name in WEIGHTS_NAMES:
    if (folder / name).is_file():
      break
  else:
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.safetensors"))
    found = f"; found only {', '.join(others)}" if others else ""
    raise InputFileError(f"{folder}: no weights file: looked for {', '.join(WEIGHTS_NAMES)}{found}")
  weights = folder / name
  single = folder / name.removesuffix(".index.json")
  if name.endswith(".index.json") and single.is_file():
    logger.warning("%s: has both %s and the sharded %s; reading the shards, as diffusers does (%s is ignored: "
                   "remove it if it is stale)", folder, single.name, name, single.name)
  if name.endswith(".index.json"):
    files, entries = _sharded_entries(folder, weights)
  else:
    files, entries = [weights], read_header(weights)
  logger.debug("%s: %d tensors in %d file(s)", folder, len(entries), len(files))
  return TensorSource(folder, files, entries)


def describe(source: TensorSource) -> dict[str, Any]:
  """A JSON-able summary for checkpoint metadata: folder, files, tensor count and dtypes."""
  return {"path": str(source.path), "files": [f.name for f in source.files], "num_tensors": len(source),
          "dtypes": sorted({source.dtype(k) for k in source.keys()})}
