"""A cache of VAE-encoded clips for LaLRM training: encode once with the frozen VAE, read many times.

    prepare_latents(...)                      # data/latent_writer.py: `wonderland prepare-latents`
    cache = LatentCache("cache/re10k")        # len(cache), cache[i] -> dict, iter(cache) streams in order

Latents: the VAE posterior *mean* of the clip's frames (mapped from [0, 1] to [-1, 1]), multiplied by the
VAE config's `scaling_factor` (divided when `invert_scale_latents`), i.e. the scaled latent space the video
diffusion model samples in (as `diffusion.sampling.encode_image`, without the noise). To decode:
`vae.decode(latents / scaling_factor)`. A VAE config with a `shift_factor` is refused (CogVideoX has none):
`models.vae.encode_frames`, the encoding the LaLRM's training step and reconstruction use too.

On disk (written in a staging folder, renamed when complete):

    out_dir/index.json                          format, version, record count, shards, shapes, VAE scaling,
                                                clip spec, dataset spec, seed
    out_dir/clips-00000-of-00004.array_record   ArrayRecord shards (group_size 1: cheap random access)

Each record is one clip: an uncompressed `.npz` (no pickle) of the keys in `wonderland_jax.data` with
`latents` (T, h, w, C) float32 instead of `frames`, and `latents_std` (T, h, w, C) float16, the posterior's
standard deviation in the same scaled space (caches written since it is stored: index `latents.std` true), from
which the pipeline draws posterior samples (`data.posterior='sample'`). Caches of generated latents
(`wonderland generate-latents`, index `latents.kind` 'generated') hold the video model's samples, the decoded
frames as their supervision views, and per record its `prompt` and `seed`. Target images are stored as 8-bit,
either PNG-encoded (`image_codec='png'`, default, about half the size) or raw uint8 (`'raw'`, fastest to
read); reading gives float32 in [0, 1] (quantised to 1/255).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio3
import numpy as np

from wonderland_jax.errors import InputFileError, WonderlandError

logger = logging.getLogger(__name__)

CACHE_FORMAT = "wonderland-latent-cache"
CACHE_VERSION = 1
INDEX_FILE = "index.json"
IMAGE_CODECS = ("png", "raw")
EXTRA_KEYS = ("prompt", "seed")  # generated latents: what made them; in the records, not in training batches
CAMERA_KEYS = ("viewmats", "intrinsics", "target_viewmats", "target_intrinsics", "target_is_seen",
               "frame_indices", "target_indices", "pose_scale", "scene_index")


def array_record_module():
  try:
    from array_record.python import array_record_module  # noqa: PLC0415 (optional on some platforms)
  except ImportError as err:  # grain depends on array_record on Linux; elsewhere it may be missing
    raise WonderlandError("the latent cache needs the array_record package (pip install array-record)") from err
  return array_record_module


def decode_record(data: bytes, where: str = "latent cache record") -> dict[str, np.ndarray]:
  """Inverse of `encode_record`; target_images come back as float32 in [0, 1]."""
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError) as err:
    raise InputFileError(f"{where}: corrupt record: {err}") from err
  if "target_images_png" in arrays:
    blob, offsets = arrays.pop("target_images_png"), arrays.pop("target_images_png_offsets")
    images = np.stack([iio3.imread(blob[start:end].tobytes(), extension=".png")
                       for start, end in zip(offsets[:-1], offsets[1:])])
  else:
    images = arrays["target_images"]
  arrays["target_images"] = images.astype(np.float32) / np.float32(255.0)
  return arrays


class LatentCache:
  """Reads a cache written by `prepare_latents`: random access `cache[i]` and in-order streaming `iter(cache)`.

  `index` is the parsed index.json. Raises InputFileError naming the folder or file when the cache is
  incomplete (no index.json: the preparation did not finish) or inconsistent.
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = Path(directory)
    index_path = self.directory / INDEX_FILE
    if not index_path.is_file():
      raise InputFileError(f"{self.directory}: not a latent cache (no {INDEX_FILE}); create it with "
                           "`wonderland prepare-latents`")
    try:
      self.index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
      raise InputFileError(f"{index_path}: cannot read: {err}") from err
    if not isinstance(self.index, dict) or self.index.get("format") != CACHE_FORMAT:
      raise InputFileError(f"{index_path}: not a {CACHE_FORMAT} index")
    if self.index.get("version") != CACHE_VERSION:
      raise InputFileError(f"{index_path}: version {self.index.get('version')!r}, this code reads {CACHE_VERSION}")
    self.paths = [self.directory / shard["file"] for shard in self.index["shards"]]
    missing = [str(path) for path in self.paths if not path.is_file()]
    if missing:
      raise InputFileError(f"{index_path}: shard file(s) missing: {', '.join(missing)}")
    self._source = None

  @property
  def source(self):
    """The underlying grain ArrayRecordDataSource (opened on first use)."""
    if self._source is None:
      import grain  # noqa: PLC0415 (grain loads only when a cache is read)
      array_record_module()  # a clear error if array_record is missing
      self._source = grain.sources.ArrayRecordDataSource([str(path) for path in self.paths])
      if len(self._source) != self.index["num_records"]:
        raise InputFileError(f"{self.directory / INDEX_FILE}: lists {self.index['num_records']} records but the "
                             f"shards hold {len(self._source)}")
    return self._source

  @property
  def has_std(self) -> bool:
    """Whether the records hold `latents_std` (the posterior's std)."""
    return bool(self.index.get("latents", {}).get("std", False))

  @property
  def holds_samples(self) -> bool:
    """Whether the latents are already samples (generated by the video model), not posterior means."""
    return self.index.get("latents", {}).get("kind") == "generated"

  def __len__(self) -> int:
    return int(self.index["num_records"])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    return decode_record(self.source[int(index)], f"{self.directory} record {index}")

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    for index in range(len(self)):
      yield self[index]
