"""Writing a latent cache (`wonderland prepare-latents`): clips sampled from a data config, their frames encoded
once by the frozen VAE (`models.vae.encode_frames`), written as ArrayRecord shards and an index in the format
`latent_cache` reads (see there).

    prepare_latents({"source": "scenes", "format": "realestate10k", "root": "re10k/train", ...}, vae,
                    "cache/re10k", num_clips=10000, shard_size=256, seed=0)
"""

from __future__ import annotations

import dataclasses
import io
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
from wonderland_jax.data.latent_cache import (
  CACHE_FORMAT,
  CACHE_VERSION,
  CAMERA_KEYS,
  EXTRA_KEYS,
  IMAGE_CODECS,
  INDEX_FILE,
  LatentCache,
  array_record_module,
)
from wonderland_jax.data.pipeline import data_config, make_clip_source
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.io_utils import atomic_directory, to_uint8, write_json
from wonderland_jax.models.vae import encode_frames
from wonderland_jax.outputs import check_output_directory
from wonderland_jax.progress import progress as show_progress

logger = logging.getLogger(__name__)


def make_encoder(vae, with_std: bool = False) -> Callable[[np.ndarray], np.ndarray | tuple[np.ndarray, np.ndarray]]:
  """A jit-compiled encoder: frames (B, F, H, W, 3) float in [0, 1] -> scaled latents (B, T, h, w, C) float32
  (numpy), T = 1 + (F - 1) / temporal compression: the posterior mean (`encode_frames`), and with `with_std`
  also the posterior's standard deviation in the same scaled space. Compiles once per input shape."""
  graphdef, state = nnx.split(vae)

  @jax.jit
  def encode(state, frames):
    model = nnx.merge(graphdef, state)
    mean = encode_frames(model, frames).astype(jnp.float32)
    if not with_std:
      return mean
    std = model.config.scale_latents(model.encode(frames * 2 - 1).std)  # scaling is linear (no shift)
    return mean, std.astype(jnp.float32)

  def run(frames):
    out = encode(state, jnp.asarray(frames, jnp.float32))
    return tuple(np.asarray(x) for x in out) if with_std else np.asarray(out)

  return run


def encode_record(example: Mapping[str, np.ndarray], image_codec: str = "png") -> bytes:
  """One cached clip (with `latents`, the camera keys and `target_images` (V, H, W, 3) in [0, 1]) -> bytes."""
  arrays = {"latents": np.asarray(example["latents"], np.float32)}
  if "latents_std" in example:
    arrays["latents_std"] = np.asarray(example["latents_std"], np.float16)
  arrays.update({key: np.asarray(example[key]) for key in CAMERA_KEYS})
  arrays.update({key: np.asarray(example[key]) for key in EXTRA_KEYS if key in example})
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
  out_dir = Path(out_dir)
  if num_clips < 1 or shard_size < 1 or batch_size < 1:
    raise WonderlandError(f"prepare_latents: num_clips, shard_size and batch_size must be >= 1, got {num_clips}, "
                          f"{shard_size}, {batch_size}")
  if image_codec not in IMAGE_CODECS:
    raise WonderlandError(f"image_codec must be one of {IMAGE_CODECS}, got {image_codec!r}")
  if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
    raise WonderlandError(f"{out_dir}: exists and is not empty; pass overwrite=True (--overwrite) to replace it")
  check_output_directory(out_dir, overwrite=True)  # replaces only a cache this project wrote; parent writable
  is_spec = hasattr(dataset_spec, "items")  # a dict or ConfigDict, not a built source
  source = make_clip_source(dataset_spec) if is_spec else dataset_spec
  if not hasattr(source, "clip"):
    raise WonderlandError(f"prepare_latents needs a clip source (synthetic or scenes), got {type(source).__name__}")
  temporal = int(vae.config.temporal_compression_ratio)
  if (source.spec.num_frames - 1) % temporal:
    raise WonderlandError(f"num_frames={source.spec.num_frames} must be 1 + k * {temporal} for this VAE")

  encode = make_encoder(vae, with_std=True)
  errors = getattr(source, "errors", None)
  skipped_before = errors.count if errors is not None else 0
  shapes: dict[str, list] = {}
  with atomic_directory(out_dir) as staging:
    writer = _ShardWriter(staging, num_clips, shard_size)
    clips = _clip_stream(source, seed, num_clips)
    clips = show_progress(clips, desc="encoding clips", total=num_clips) if progress else clips
    for batch in _batches(clips, batch_size):
      padded = batch + [batch[-1]] * (batch_size - len(batch))  # one compiled shape
      latents, stds = encode(np.stack([clip["frames"] for clip in padded]))
      for clip, clip_latents, clip_std in zip(batch, latents, stds):
        record = {key: clip[key] for key in CAMERA_KEYS + ("target_images",)} | {"latents": clip_latents,
                                                                                 "latents_std": clip_std}
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
      "latents": {"kind": "posterior_mean", "std": True, "scaling_factor": config.scaling_factor,
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
    self._module = array_record_module()

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
