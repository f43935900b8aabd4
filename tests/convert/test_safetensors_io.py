"""Reading diffusers safetensors folders: exact values per dtype, sharded indexes, pipeline roots, and every
malformed-input error naming its file and key."""

import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import convert_toy as toy
from wonderland_jax.convert.safetensors_io import open_source
from wonderland_jax.errors import InputFileError


def small_tensors(dtype):
  torch.manual_seed(0)
  return {"a.weight": (torch.randn(4, 3, 2) * 100).to(dtype), "b.bias": torch.randn(7).to(dtype),
          "c.scalar": torch.tensor(1e-3, dtype=dtype)}


def write_folder(folder, tensors, name="diffusion_pytorch_model.safetensors", config=True):
  folder.mkdir(parents=True, exist_ok=True)
  if config:
    (folder / "config.json").write_text(json.dumps({"_class_name": "Thing", "width": 4}))
  save_file(tensors, folder / name)
  return folder


@pytest.mark.parametrize("dtype, name", [(torch.float32, "F32"), (torch.float16, "F16"), (torch.bfloat16, "BF16")])
def test_values_read_exactly(tmp_path, dtype, name):
  tensors = small_tensors(dtype)
  source = open_source(write_folder(tmp_path / "m", tensors))
  assert source.keys() == sorted(tensors)
  assert source.config == {"_class_name": "Thing", "width": 4}
  assert source.files == [tmp_path / "m" / "diffusion_pytorch_model.safetensors"]
  for key, tensor in tensors.items():
    assert source.dtype(key) == name
    assert source.shape(key) == tuple(tensor.shape)
    value = source.read(key)
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, tensor.float().numpy())
    assert source.read_raw(key).dtype.itemsize == tensor.element_size()


def test_model_safetensors_name_is_found(tmp_path):
  source = open_source(write_folder(tmp_path / "m", small_tensors(torch.float32), name="model.safetensors"))
  assert [f.name for f in source.files] == ["model.safetensors"]
  assert len(source.keys()) == 3


def test_sharded_index(tmp_path):
  model = toy.torch_model()
  state = model.state_dict()
  keys = sorted(state)
  folder = toy.write_model_folder(tmp_path / "m", state, shards=[keys[:10], keys[10:]])
  source = open_source(folder)
  assert [f.name for f in source.files] == ["diffusion_pytorch_model-00001-of-00002.safetensors",
                                            "diffusion_pytorch_model-00002-of-00002.safetensors"]
  assert source.keys() == keys
  assert source.file(keys[0]) == source.files[0] and source.file(keys[-1]) == source.files[1]
  for key in keys:
    np.testing.assert_array_equal(source.read(key), state[key].numpy())


def test_pipeline_root_and_subfolder(tmp_path):
  root = tmp_path / "pipeline"
  write_folder(root / "vae", small_tensors(torch.float16))
  (root / "model_index.json").write_text("{}")
  assert open_source(root, subfolder="vae").path == root / "vae"
  # The model folder itself, given with the subfolder name too: it holds a config.json.
  assert open_source(root / "vae", subfolder="vae").path == root / "vae"
  with pytest.raises(InputFileError, match=r"pipeline: neither a pipeline root with a transformer/ folder"):
    open_source(root, subfolder="transformer")
  with pytest.raises(InputFileError, match="missing.*not found"):
    open_source(tmp_path / "missing", subfolder="vae")


def test_config_missing_or_invalid(tmp_path):
  source = open_source(write_folder(tmp_path / "m", small_tensors(torch.float32), config=False))
  with pytest.raises(InputFileError, match=r"m/config.json: model config not found"):
    source.config
  (tmp_path / "m" / "config.json").write_text("{not json")
  with pytest.raises(InputFileError, match=r"m/config.json: cannot read"):
    open_source(tmp_path / "m").config


def test_no_weights_lists_what_was_looked_for(tmp_path):
  folder = tmp_path / "m"
  folder.mkdir()
  (folder / "config.json").write_text("{}")
  (folder / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
  with pytest.raises(InputFileError) as err:
    open_source(folder)
  message = str(err.value)
  assert str(folder) in message
  for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
               "model.safetensors", "model.safetensors.index.json", "found only diffusion_pytorch_model.bin"):
    assert name in message


def test_truncated_file(tmp_path):
  folder = write_folder(tmp_path / "m", small_tensors(torch.float32))
  file = folder / "diffusion_pytorch_model.safetensors"
  data = file.read_bytes()
  file.write_bytes(data[:-9])  # Cut into the last tensor.
  with pytest.raises(InputFileError, match=r"diffusion_pytorch_model.safetensors: truncated: key '.*' ends at byte"):
    open_source(folder)
  (header_size,) = struct.unpack("<Q", data[:8])
  file.write_bytes(data[:8 + header_size // 2])  # Cut into the header.
  with pytest.raises(InputFileError, match=r"diffusion_pytorch_model.safetensors: truncated: the header claims"):
    open_source(folder)
  file.write_bytes(data[:5])
  with pytest.raises(InputFileError, match="only 5 bytes"):
    open_source(folder)


def test_corrupted_header(tmp_path):
  folder = write_folder(tmp_path / "m", small_tensors(torch.float32))
  file = folder / "diffusion_pytorch_model.safetensors"
  data = bytearray(file.read_bytes())
  garbled = bytearray(data)
  garbled[9:19] = b"!!!!!!!!!!"
  file.write_bytes(bytes(garbled))
  with pytest.raises(InputFileError, match=r"diffusion_pytorch_model.safetensors: corrupted safetensors header"):
    open_source(folder)
  huge = bytearray(data)
  huge[:8] = struct.pack("<Q", 1 << 60)
  file.write_bytes(bytes(huge))
  with pytest.raises(InputFileError, match="corrupted safetensors header: it claims"):
    open_source(folder)
  # Offsets that disagree with dtype x shape.
  (header_size,) = struct.unpack("<Q", data[:8])
  header = json.loads(data[8:8 + header_size])
  header["b.bias"]["shape"] = [8]
  text = json.dumps(header, separators=(",", ":")).encode().ljust(header_size)
  assert len(text) == header_size
  file.write_bytes(bytes(data[:8]) + text + bytes(data[8 + header_size:]))
  with pytest.raises(InputFileError, match=r"key 'b.bias' \(F32 \[8\]\) needs 32 bytes"):
    open_source(folder)


def sharded_folder(tmp_path):
  state = {k: v for k, v in small_tensors(torch.float32).items()}
  return toy.write_model_folder(tmp_path / "m", state, shards=[["a.weight"], ["b.bias", "c.scalar"]])


def test_missing_shard(tmp_path):
  folder = sharded_folder(tmp_path)
  (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
  with pytest.raises(InputFileError) as err:
    open_source(folder)
  assert "diffusion_pytorch_model.safetensors.index.json" in str(err.value)
  assert "diffusion_pytorch_model-00002-of-00002.safetensors" in str(err.value)


def test_key_missing_from_its_shard(tmp_path):
  folder = sharded_folder(tmp_path)
  index_file = folder / "diffusion_pytorch_model.safetensors.index.json"
  index = json.loads(index_file.read_text())
  index["weight_map"]["c.scalar"] = "diffusion_pytorch_model-00001-of-00002.safetensors"
  index["weight_map"]["ghost.weight"] = "diffusion_pytorch_model-00002-of-00002.safetensors"
  index_file.write_text(json.dumps(index))
  with pytest.raises(InputFileError) as err:
    open_source(folder)
  message = str(err.value)
  assert "index.json: 2 key(s) mapped to shards that do not contain them" in message
  assert "'c.scalar' (in diffusion_pytorch_model-00001-of-00002.safetensors)" in message
  assert "'ghost.weight' (in diffusion_pytorch_model-00002-of-00002.safetensors)" in message


def test_key_in_two_files(tmp_path):
  folder = sharded_folder(tmp_path)
  save_file({"a.weight": torch.zeros(4, 3, 2), "b.bias": torch.zeros(7), "c.scalar": torch.tensor(0.0)},
            folder / "diffusion_pytorch_model-00002-of-00002.safetensors")
  with pytest.raises(InputFileError, match="key 'a.weight' is stored in two files"):
    open_source(folder)


def test_bad_index(tmp_path):
  folder = sharded_folder(tmp_path)
  (folder / "diffusion_pytorch_model.safetensors.index.json").write_text('{"metadata": {}}')
  with pytest.raises(InputFileError, match="index.json: expected a JSON object with a 'weight_map'"):
    open_source(folder)
