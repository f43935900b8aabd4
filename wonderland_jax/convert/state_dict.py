"""Single weight files in PyTorch's key layout (a torch state_dict, or the same keys in .safetensors), for the
networks that load one file rather than a diffusers model folder (VGG, LPIPS, FID Inception, I3D).

    source = open_weights("vgg19-dcbb9e9d.pth")              # or a .safetensors file
    check_keys(source, model.torch_shapes(), ("classifier.",), "torchvision vgg19")   # one error listing all
    load_into(model, source, VGG_RULES, jnp.float32)          # convert with the rule table, update in place

A `.safetensors` file is a `TensorSource` (headers checked, tensors read lazily); a `.pth` / `.pt` / `.bin`
state_dict is read with `torch.load(weights_only=True)` (no arbitrary unpickling) into an `ArraySource`, which
offers the same interface to `convert_state`. torch is imported only to read such a file.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from wonderland_jax import checkpoints
from wonderland_jax.convert.rules import Rule, convert_state
from wonderland_jax.convert.safetensors_io import DTYPES, TensorSource, read_header
from wonderland_jax.errors import InputFileError, WonderlandError

logger = logging.getLogger(__name__)

# numpy dtype -> safetensors dtype name (for the report of `convert_state`).
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class ArraySource:
  """A `TensorSource` look-alike over arrays in memory (a torch state_dict read with torch.load): `path`,
  `keys()`, `shape(key)`, `dtype(key)`, `read_raw(key)`, `read(key)`, as `convert_state` uses them."""

  def __init__(self, path: Path, arrays: Mapping[str, np.ndarray]):
    self.path = path
    self.files = [path]
    self._arrays = dict(arrays)

  def __len__(self) -> int:
    return len(self._arrays)

  def __contains__(self, key: str) -> bool:
    return key in self._arrays

  def keys(self) -> list[str]:
    return sorted(self._arrays)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._arrays[key].shape)

  def dtype(self, key: str) -> str:
    return _DTYPE_NAMES.get(self._arrays[key].dtype, str(self._arrays[key].dtype))

  def read_raw(self, key: str) -> np.ndarray:
    return self._arrays[key]

  def read(self, key: str) -> np.ndarray:
    return np.asarray(self._arrays[key], dtype=np.float32)


def read_torch_state_dict(path: Path) -> ArraySource:
  """A torch state_dict file (torch.load, weights_only) -> ArraySource; torch is imported only here."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    raise WonderlandError(
      f"{path}: reading a PyTorch .pth file needs torch, which is not installed. Install it, or convert the file "
      f"to safetensors once where torch is available: python -c \"import torch, safetensors.torch as st; "
      f"st.save_file(torch.load('{path}', weights_only=True), '{path.with_suffix('.safetensors')}')\" and pass "
      f"the .safetensors file") from None
  try:
    state = torch.load(path, weights_only=True, map_location="cpu")
  except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
    raise InputFileError(f"{path}: cannot read it as a PyTorch state_dict: {e}") from None
  if not isinstance(state, Mapping):
    raise InputFileError(f"{path}: expected a state_dict (a dict of tensors), got a {type(state).__name__}")
  not_tensors = [str(key) for key, value in state.items() if not isinstance(key, str) or not torch.is_tensor(value)]
  if not_tensors:
    raise InputFileError(f"{path}: expected a state_dict of tensors; not tensors: {', '.join(not_tensors[:10])}")
  arrays = {}
  for key, tensor in state.items():
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()  # exact; numpy has no bfloat16
    arrays[key] = tensor.numpy()
  return ArraySource(path, arrays)


def open_weights(path: str | os.PathLike) -> TensorSource | ArraySource:
  """One weights file: `.safetensors` (headers checked, tensors read lazily) or a PyTorch state_dict
  (`.pth` / `.pt` / `.bin`, read with torch). `InputFileError` naming the file if missing or unreadable."""
  path = Path(path)
  if not path.is_file():
    raise InputFileError(f"{path}: weights file not found")
  if path.suffix == ".safetensors":
    return TensorSource(path, [path], read_header(path))
  if path.suffix in (".pth", ".pt", ".bin"):
    return read_torch_state_dict(path)
  raise InputFileError(f"{path}: unknown weights format {path.suffix!r}: expected a PyTorch state_dict (.pth) or "
                       f".safetensors")


def check_keys(source: TensorSource | ArraySource, expected: Mapping[str, tuple[int, ...]],
               ignored_prefixes: Sequence[str], what: str, hint: str = "") -> None:
  """Raises one `InputFileError` naming the file and listing every missing key, unexpected key (not starting
  with an `ignored_prefixes` entry) and shape mismatch of `source` against `expected` {key: PyTorch shape}
  (`checkpoints.check_fit`)."""
  checkpoints.check_fit(expected, {key: source.shape(key) for key in source.keys()},
                        f"{source.path}: not a {what} state_dict{hint}", error=InputFileError,
                        ignored=ignored_prefixes, missing="missing key(s)", unexpected="unexpected key(s)",
                        mismatch="{key}: {found} in the file, expected {expected}")


def load_into(module: nnx.Module, source: TensorSource | ArraySource, rules: Sequence[Rule], dtype: Any) -> None:
  """Converts `source` with `rules` into the params of the abstract `module`, in place."""
  state, report = convert_state(source, rules, module, dtype=dtype, progress_desc=f"load {source.path.name}")
  nnx.update(module, state)
  logger.info("%s: %d parameters in %d tensors (%s -> %s)", source.path, report.num_params, report.num_tensors,
              "/".join(report.source_dtypes), report.dtype)
