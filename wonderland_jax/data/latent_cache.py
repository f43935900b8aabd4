"""A cache of VAE-encoded clips for LaLRM training: encode once with the frozen VAE, read many times.

    prepare_latents({"source": "scenes", "format": "realestate10k", "root": "re10k/train", ...}, vae,
                    "cache/re10k", num_clips=10000, shard_size=256, seed=0)
    cache = LatentCache("cache/re10k")        # len(cache), cache[i] -> dict, iter(cache) streams in order

Latents: the VAE posterior *mean* of the clip's frames (mapped from [0, 1] to [-1, 1]), multiplied by the
VAE config's `scaling_factor` (divided when `invert_scale_latents`), i.e. the scaled latent space the video
diffusion model samples in (as `diffusion.sampling.encode_image`, without the noise). To decode:
`vae.decode(latents / scaling_factor)`. A VAE config with a `shift_factor` is refused (CogVideoX has none).

On disk (written in a staging folder, renamed when complete):

    out_dir/index.json                          format, version, record count, shards, shapes, VAE scaling,
                                                clip spec, dataset spec, seed
    out_dir/clips-00000-of-00004.array_record   ArrayRecord shards (group_size 1: cheap random access)

Each record is one clip: an uncompressed `.npz` (no pickle) of the keys in `wonderland_jax.data` with
`latents` (T, h, w, C) float32 instead of `frames`. Target images are stored as 8-bit, either PNG-encoded
(`image_codec='png'`, default, about half the size) or raw uint8 (`'raw'`, fastest to read); reading gives
float32 in [0, 1] (quantised to 1/255).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import imageio.v3 as iio3
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from wonderland_jax.data.clips import clip_rng
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_directory, to_uint8, write_json
from wonderland_jax.progress import progress as show_progress

logger = logging.getLogger(__name__)

CACHE_FORMAT = "wonderland-latent-cache"
CACHE_VERSION = 1
INDEX_FILE = "index.json"
IMAGE_CODECS = ("png", "raw")
CAMERA_KEYS = ("viewmats", "intrinsics", "target_viewmats", "target_intrinsics", "target_is_seen",
               "frame_indices", "target_indices", "pose_scale", "scene_index")


def _array_record():
  try:
    from array_record.python import array_record_module
  except ImportError as err:  # grain depends on array_record on Linux; elsewhere it may be missing
    raise WonderlandError("the latent cache needs the array_record package (pip install array-record)") from err
  return array_record_module


def scale_latents(mean: jax.Array, config) -> jax.Array:
  """VAE posterior mean (..., C) -> the diffusion model's scaled latents (see module docstring)."""
  if config.shift_factor is not None:
    raise WonderlandError(f"VAE config has shift_factor={config.shift_factor}; the latent cache only supports "
                          "CogVideoX's scaling (no shift)")
  return config.scale_latents(mean)


def make_encoder(vae) -> Callable[[np.ndarray], np.ndarray]:
  """A jit-compiled encoder: frames (B, F, H, W, 3) float in [0, 1] -> scaled latents (B, T, h, w, C) float32
  (numpy), T = 1 + (F - 1) / temporal compression. Compiles once per input shape."""
  graphdef, state = nnx.split(vae)
  config = vae.config

  @jax.jit
  def encode(state, frames):
    model = nnx.merge(graphdef, state)
    return scale_latents(model.encode(frames * 2.0 - 1.0).mean, config).astype(jnp.float32)

  return lambda frames: np.asarray(encode(state, jnp.asarray(frames, jnp.float32)))


def encode_record(example: Mapping[str, np.ndarray], image_codec: str = "png") -> bytes:
  """One cached clip (with `latents`, the camera keys and `target_images` (V, H, W, 3) in [0, 1]) -> bytes."""
  arrays = {"latents": np.asarray(example["latents"], np.float32)}
  arrays.update({key: np.asarray(example[key]) for key in CAMERA_KEYS})
  images = [to_uint8(image) for image in np.asarray(example["target_images"])]
  if image_codec == "raw":
    arrays["target_images"] = np.stack(images)
  elif image_codec == "png":
    encoded = [np.frombuffer(iio3.imwrite("<bytes>", image, extension=".png"), np.uint8) for image in images]
    arrays["target_images_png"] = np.concatenate(encoded)
    arrays["target_images_png_offsets"] = np.cumsum([0] + [len(e) for e in encoded]).astype(np.int64)
  else:
    raise WonderlandError(f"image_codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


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
      import grain
      _array_record()  # a clear error if array_record is missing
      self._source = grain.sources.ArrayRecordDataSource([str(path) for path in self.paths])
      if len(self._source) != self.index["num_records"]:
        raise InputFileError(f"{self.directory / INDEX_FILE}: lists {self.index['num_records']} records but the "
                             f"shards hold {len(self._source)}")
    return self._source

  def __len__(self) -> int:
    return int(self.index["num_records"])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)})")
    return decode_record(self.source[int(index)], f"{self.directory} record {index}")

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    for index in range(len(self)):
      yield self[index]


def prepare_latents(dataset_spec: Mapping[str, Any] | Any, vae, out_dir: str | os.PathLike, *, num_clips: int,
                    shard_size: int = 256, seed: int = 0, batch_size: int = 1, image_codec: str = "png",
                    overwrite: bool = False, progress: bool = True) -> LatentCache:
  """Samples `num_clips` clips, encodes their frames with `vae` and writes a latent cache to `out_dir`.

  Args:
    dataset_spec: a data config (see `pipeline.DATA_DEFAULTS`; source 'synthetic' or 'scenes'), or a built
      clip source (`clips.ClipSource` / `synthetic.SyntheticDataset`).
    vae: a `CogVideoXVAE` (frozen; only `encode` is used). The clips' num_frames must be 1 + k x its
      temporal compression.
    out_dir: the cache folder; must not exist or be empty unless `overwrite`.
    num_clips: clips to write. Scenes are visited in a seeded random order, each once per pass; more clips
      than scenes take further passes (with new clips of the same scenes). Bad scenes are skipped (and
      counted in the index) or raise, as the source's on_error says.
    shard_size: clips per ArrayRecord shard.
    seed: seeds the scene order and the clip sampling (clip of scene s in pass p uses clip_rng(seed, s, p)).
    batch_size: clips encoded per VAE call (the last batch is padded; one compile).
    image_codec: 'png' or 'raw' for the target images.
    overwrite: replace an existing cache.
    progress: show a progress bar (terminal) or log lines.

  Returns the written cache, opened.
  """
  from wonderland_jax.data.pipeline import data_config, make_clip_source  # pipeline imports this module

  out_dir = Path(out_dir)
  if num_clips < 1 or shard_size < 1 or batch_size < 1:
    raise WonderlandError(f"prepare_latents: num_clips, shard_size and batch_size must be >= 1, got {num_clips}, "
                          f"{shard_size}, {batch_size}")
  if image_codec not in IMAGE_CODECS:
    raise WonderlandError(f"image_codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
    raise WonderlandError(f"{out_dir}: exists and is not empty; pass overwrite=True (--overwrite) to replace it")
  is_spec = hasattr(dataset_spec, "items")  # a dict or ConfigDict, not a built source
  source = make_clip_source(dataset_spec) if is_spec else dataset_spec
  if not hasattr(source, "clip"):
    raise WonderlandError(f"prepare_latents needs a clip source (synthetic or scenes), got {type(source).__name__}")
  temporal = int(vae.config.temporal_compression_ratio)
  if (source.spec.num_frames - 1) % temporal:
    raise WonderlandError(f"num_frames={source.spec.num_frames} must be 1 + k * {temporal} for this VAE")

  encode = make_encoder(vae)
  errors = getattr(source, "errors", None)
  skipped_before = errors.count if errors is not None else 0
  shapes: dict[str, list] = {}
  with atomic_directory(out_dir) as staging:
    writer = _ShardWriter(staging, num_clips, shard_size)
    clips = _clip_stream(source, seed, num_clips)
    clips = show_progress(clips, desc="encoding clips", total=num_clips) if progress else clips
    for batch in _batches(clips, batch_size):
      padded = batch + [batch[-1]] * (batch_size - len(batch))  # one compiled shape
      latents = encode(np.stack([clip["frames"] for clip in padded]))
      for clip, clip_latents in zip(batch, latents):
        record = {key: clip[key] for key in CAMERA_KEYS + ("target_images",)} | {"latents": clip_latents}
        shapes = shapes or {key: [list(np.shape(value)), str(np.asarray(value).dtype)]
                            for key, value in record.items()}
        writer.write(encode_record(record, image_codec))
    writer.close()
    skipped = (errors.count if errors is not None else 0) - skipped_before
    config = vae.config
    write_json(staging / INDEX_FILE, {
      "format": CACHE_FORMAT,
      "version": CACHE_VERSION,
      "num_records": writer.count,
      "shards": writer.shards,
      "image_codec": image_codec,
      "shapes": shapes,
      "latents": {"kind": "posterior_mean", "scaling_factor": config.scaling_factor,
                  "invert_scale_latents": config.invert_scale_latents, "latent_channels": config.latent_channels,
                  "temporal_compression_ratio": config.temporal_compression_ratio},
      "clip_spec": dataclasses.asdict(source.spec),
      "dataset_spec": data_config(dataset_spec) if is_spec else type(source).__name__,
      "seed": seed,
      "num_skipped": skipped,
    })
  logger.info("wrote %d clips in %d shards to %s (%d bad scenes skipped)", writer.count, len(writer.shards), out_dir,
              skipped)
  return LatentCache(out_dir)


def _clip_stream(source, seed: int, num_clips: int) -> Iterator[dict[str, np.ndarray]]:
  """`num_clips` clips: scenes in a seeded order per pass, clip of scene s in pass p from clip_rng(seed, s, p).
  Stops with InputFileError if a whole pass yields nothing (every scene bad)."""
  count, num_pass = 0, 0
  while True:
    produced = 0
    for scene_index in np.random.default_rng([seed, num_pass]).permutation(len(source)):
      clip = source.clip(int(scene_index), clip_rng(seed, scene_index, num_pass))
      if clip is None:
        continue
      produced += 1
      yield clip
      count += 1
      if count == num_clips:
        return
    if produced == 0:
      raise InputFileError(f"no scene of the dataset gave a clip (all {len(source)} skipped as bad data)")
    num_pass += 1


class _ShardWriter:
  """Writes records into `clips-{i:05d}-of-{n:05d}.array_record` files of `shard_size` records each."""

  def __init__(self, directory: Path, num_records: int, shard_size: int):
    self.directory, self.shard_size = directory, shard_size
    self.num_shards = math.ceil(num_records / shard_size)
    self.shards: list[dict] = []
    self.count = 0
    self._writer = None
    self._module = _array_record()

  def write(self, record: bytes) -> None:
    if self.count % self.shard_size == 0:
      self.close()
      name = f"clips-{len(self.shards):05d}-of-{self.num_shards:05d}.array_record"
      self._writer = self._module.ArrayRecordWriter(str(self.directory / name), "group_size:1")
      self.shards.append({"file": name, "num_records": 0})
    self._writer.write(record)
    self.shards[-1]["num_records"] += 1
    self.count += 1

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _batches(items, size: int) -> Iterator[list]:
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch
