"""The latent cache: prepare with a tiny random CogVideoX VAE, read back, records and errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers.data import HEIGHT, SPEC, WIDTH
from wonderland_jax import checkpoints
from wonderland_jax.data import (
  LatentCache,
  SyntheticDataset,
  clip_rng,
  make_encoder,
  make_train_iterator,
  prepare_latents,
)
from wonderland_jax.data.latent_cache import decode_record
from wonderland_jax.data.latent_writer import encode_record
from wonderland_jax.errors import InputFileError, WonderlandError
from wonderland_jax.models.vae import VAEConfig

SYNTHETIC = {"source": "synthetic", "num_train_scenes": 6, "seed": 2, "num_frames": 9, "height": HEIGHT, "width": WIDTH,
             "stride": [1, 2], "num_target_seen": 2, "num_target_unseen": 2}


@pytest.fixture(scope="module")
def vae():
  """A tiny random CogVideoX VAE (8x space, 4x time), params drawn with numpy (no per-initialiser compiles)."""
  config = VAEConfig(block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=2,
                     scaling_factor=0.7).to_dict()
  abstract = checkpoints.abstract_model("cogvideox_vae", config)
  rng = np.random.default_rng(0)

  def draw(leaf):
    shape = leaf.shape
    if len(shape) >= 2:
      return (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    return (1.0 + 0.1 * rng.normal(size=shape)).astype(np.float32)
  params = jax.tree.map(draw, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
  return checkpoints.instantiate("cogvideox_vae", config, params)


@pytest.fixture(scope="module")
def cache(vae, tmp_path_factory):
  return prepare_latents(SYNTHETIC, vae, tmp_path_factory.mktemp("cache") / "latents", num_clips=5, shard_size=2,
                         seed=4, batch_size=2, progress=False)


def test_round_trip(vae, cache):
  assert len(cache) == 5 and [shard["num_records"] for shard in cache.index["shards"]] == [2, 2, 1]
  assert cache.index["latents"]["scaling_factor"] == 0.7 and cache.index["num_skipped"] == 0
  dataset = SyntheticDataset(SPEC, num_scenes=6, seed=2)
  records = list(cache)
  assert len({int(r["scene_index"]) for r in records}) == 5  # 5 different scenes from the first pass
  record = cache[3]
  scene_index = int(record["scene_index"])
  clip = dataset.clip(scene_index, clip_rng(4, scene_index, 0))
  assert record["latents"].shape == (3, HEIGHT // 8, WIDTH // 8, 4) and record["latents"].dtype == np.float32
  expected = make_encoder(vae)(clip["frames"][None])[0]  # batch 1 here, 2 in the cache
  np.testing.assert_allclose(record["latents"], expected, rtol=1e-4, atol=1e-5)
  unscaled = vae.encode(clip["frames"][None] * 2 - 1).mean[0]
  np.testing.assert_allclose(record["latents"], 0.7 * np.asarray(unscaled), rtol=1e-4, atol=1e-5)
  for key in ("viewmats", "intrinsics", "target_viewmats", "target_intrinsics", "target_is_seen", "frame_indices",
              "target_indices", "pose_scale"):
    np.testing.assert_array_equal(record[key], clip[key], err_msg=key)
  np.testing.assert_allclose(record["target_images"], clip["target_images"], atol=0.5 / 255 + 1e-6)
  assert "frames" not in record


def test_train_iterator_over_cache(cache):
  iterator = make_train_iterator({"source": "latents", "root": str(cache.directory), "batch_size": 2,
                                  "worker_threads": 0}, process_index=0, process_count=1)
  batch = next(iterator)
  assert batch["latents"].shape == (2, 3, HEIGHT // 8, WIDTH // 8, 4)
  assert batch["target_images"].shape == (2, 4, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_record_codecs(codec):
  rng = np.random.default_rng(0)
  example = {"latents": rng.normal(size=(3, 2, 2, 4)), "target_images": rng.uniform(size=(4, 8, 8, 3)),
             "viewmats": np.eye(4, dtype=np.float32)[None], "intrinsics": np.eye(3, dtype=np.float32)[None],
             "target_viewmats": np.zeros((4, 4, 4), np.float32), "target_intrinsics": np.zeros((4, 3, 3), np.float32),
             "target_is_seen": np.array([True, False, False, True]), "frame_indices": np.arange(1, dtype=np.int32),
             "target_indices": np.arange(4, dtype=np.int32), "pose_scale": np.float32(2.0),
             "scene_index": np.int32(7)}
  decoded = decode_record(encode_record(example, codec))
  np.testing.assert_array_equal(decoded["latents"], example["latents"].astype(np.float32))
  np.testing.assert_allclose(decoded["target_images"], example["target_images"], atol=0.5 / 255 + 1e-6)
  assert decoded["target_images"].dtype == np.float32 and decoded["scene_index"] == 7
  np.testing.assert_array_equal(decoded["target_is_seen"], example["target_is_seen"])


def test_errors(vae, cache, tmp_path):
  with pytest.raises(WonderlandError, match="exists and is not empty; pass overwrite"):
    prepare_latents(SYNTHETIC, vae, cache.directory, num_clips=1, progress=False)
  with pytest.raises(WonderlandError, match="num_frames=8 must be 1 \\+ k \\* 4"):
    prepare_latents(SYNTHETIC | {"num_frames": 8}, vae, tmp_path / "bad", num_clips=1, progress=False)
  with pytest.raises(InputFileError, match="not a latent cache \\(no index.json\\)"):
    LatentCache(tmp_path)
  (tmp_path / "index.json").write_text(json.dumps(cache.index | {"shards": [{"file": "gone.array_record"}]}))
  with pytest.raises(InputFileError, match="shard file\\(s\\) missing: .*gone.array_record"):
    LatentCache(tmp_path)


def test_posterior_samples_from_the_stored_std(vae, cache):
  record = cache[0]
  assert cache.has_std and not cache.holds_samples
  scene_index = int(record["scene_index"])
  clip = SyntheticDataset(SPEC, num_scenes=6, seed=2).clip(scene_index, clip_rng(4, scene_index, 0))
  std = np.asarray(vae.encode(clip["frames"][None] * 2 - 1).std[0])
  np.testing.assert_allclose(record["latents_std"], 0.7 * std, rtol=2e-3, atol=1e-4)  # scaled, float16
  assert record["latents_std"].dtype == np.float16

  def first_clips(posterior, count=10):
    config = {"source": "latents", "root": str(cache.directory), "batch_size": 1, "shuffle": False,
              "posterior": posterior}
    iterator = make_train_iterator(config, process_index=0, process_count=1)
    return [next(iterator) for _ in range(count)]  # two epochs of the 5 records

  means, samples = first_clips("mean"), first_clips("sample")
  assert "latents_std" not in means[0] and "latents_std" not in samples[0]
  np.testing.assert_array_equal(means[0]["latents"][0], record["latents"])
  noise = (samples[0]["latents"][0] - record["latents"]) / record["latents_std"].astype(np.float32)
  assert abs(noise.mean()) < 0.3 and 0.7 < noise.std() < 1.3  # mean + std x standard normal noise
  assert not np.allclose(samples[0]["latents"], samples[5]["latents"])  # a new sample each epoch
  np.testing.assert_array_equal(samples[3]["latents"], first_clips("sample", 4)[3]["latents"])  # reproducible
  np.testing.assert_array_equal(samples[0]["target_images"], means[0]["target_images"])

  old = cache.index | {"latents": cache.index["latents"] | {"std": False}}
  from wonderland_jax.data.pipeline import _LoadClip  # noqa: PLC0415
  cache_without = LatentCache(cache.directory)
  cache_without.index = old
  with pytest.raises(WonderlandError, match="posterior='sample' needs the posterior's std"):
    _LoadClip(cache_without, 0, 5, "sample")
