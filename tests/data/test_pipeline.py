"""grain pipelines: sharding, epochs, skipping, batching, and resuming from the iterator's state."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from tests.helpers.data import HEIGHT, WIDTH
from wonderland_jax.data import (
  ClipSpec,
  SyntheticDataset,
  clip_rng,
  clip_spec,
  data_config,
  eval_clips,
  make_iterator,
  make_train_iterator,
  source_configs,
)
from wonderland_jax.errors import WonderlandError


class _Draws:
  """A stand-in source: the clip of scene i is its index and one draw of the clip's Generator (None if bad)."""

  def __init__(self, num_scenes: int, bad=()):
    self.num_scenes, self.bad = num_scenes, set(bad)

  def __len__(self):
    return self.num_scenes

  def clip(self, index, rng):
    if index in self.bad:
      return None
    return {"scene_index": np.int32(index), "draw": np.float64(rng.random())}


def _all(iterator):
  return [example for batch in iterator
          for example in zip(batch["scene_index"].tolist(), batch["draw"].tolist())]


def test_shards_epochs_and_clip_rng():
  shards = [_all(make_iterator(_Draws(10), batch_size=1, seed=7, num_epochs=2, shard_index=index, shard_count=2))
            for index in range(2)]
  for index, examples in enumerate(shards):
    scenes = [scene for scene, _ in examples]
    assert sorted(scenes[:5]) == sorted(scenes[5:]) == list(range(index, 10, 2))  # each epoch sees its shard once
    for position, (scene, draw) in enumerate(examples):  # the clip of scene s in epoch e: clip_rng(seed, s, e)
      assert draw == clip_rng(7, scene, position // 5).random()
  unsharded = _all(make_iterator(_Draws(10), batch_size=1, seed=7, num_epochs=2, shard_index=0, shard_count=1))
  assert sorted(unsharded) == sorted(shards[0] + shards[1])  # the same clips, whatever the number of hosts


def test_batching_skips_bad_and_drops_remainder():
  batches = list(make_iterator(_Draws(10, bad={2, 5}), batch_size=3, num_epochs=1, shard_index=0, shard_count=1))
  assert [batch["scene_index"].shape for batch in batches] == [(3,), (3,)]  # 8 good clips: 2 full batches
  assert not {2, 5} & set(np.concatenate([batch["scene_index"] for batch in batches]).tolist())
  ordered = _all(make_iterator(_Draws(4), batch_size=2, shuffle=False, num_epochs=1, shard_index=0, shard_count=1))
  assert [scene for scene, _ in ordered] == [0, 1, 2, 3]


def test_state_resumes_exactly():
  config = {"source": "synthetic", "num_train_scenes": 5, "num_frames": 9, "height": HEIGHT, "width": WIDTH,
            "stride": [1, 2], "batch_size": 2, "shuffle_seed": 3, "worker_threads": 2, "prefetch_buffer_size": 2}
  iterator = make_train_iterator(config, process_index=0, process_count=1)
  for _ in range(2):
    next(iterator)
  state = iterator.get_state()
  json.dumps(state)  # plain data: goes into the checkpoint as is
  expected = [next(iterator) for _ in range(3)]  # crosses the epoch boundary (5 scenes, batches of 2)
  resumed = make_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  for want, got in zip(expected, [next(resumed) for _ in range(3)]):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  assert expected[0]["frames"].shape == (2, 9, HEIGHT, WIDTH, 3)


def test_scenes_source(re10k_root):
  config = {"source": "scenes", "format": "realestate10k", "root": re10k_root, "num_frames": 9, "height": 24,
            "width": 24, "batch_size": 4, "num_target_unseen": 3}
  batch = next(make_train_iterator(config, process_index=1, process_count=2))  # 2 of 4 per process
  assert batch["frames"].shape == (2, 9, 24, 24, 3) and batch["target_images"].shape == (2, 5, 24, 24, 3)
  assert batch["scene_index"].tolist() == [1, 1]  # process 1 of 2 has scene 1 of 0..2 (two epochs here)
  np.testing.assert_array_equal(batch["viewmats"][:, 0], np.tile(np.eye(4), (2, 1, 1)))
  # RealEstate10K's default strides (3-5) do not fit 9 frames in 24: the longest that fits (2) is used.
  np.testing.assert_array_equal(np.diff(batch["frame_indices"], axis=1), 2)
  assert clip_spec(config).stride is None


def test_config_errors():
  with pytest.raises(WonderlandError, match="unknown key\\(s\\) batch, num_frame"):
    data_config({"batch": 1, "num_frame": 9})
  with pytest.raises(WonderlandError, match="source='scenes' needs 'root'"):
    data_config({"source": "scenes"})
  with pytest.raises(WonderlandError, match="batch_size=3 is not divisible by the 2 processes"):
    make_train_iterator({"batch_size": 3}, process_index=0, process_count=2)
  with pytest.raises(WonderlandError, match="held-out clips of source='scenes' need 'eval_root'"):
    eval_clips({"source": "scenes", "root": "x", "format": "acid"})
  assert clip_spec({"stride": 2}).stride == (2, 2)
  assert clip_spec({}) == ClipSpec(num_frames=9, height=32, width=32, num_target_seen=2, num_target_unseen=2)


def test_training_config_and_eval_clips():
  """A whole (locked) training config: data from config.data, the batch size from config.train."""
  config = ml_collections.ConfigDict({
    "seed": 0, "train": {"batch_size": 2},
    "data": {"source": "synthetic", "encode_frames": True, "num_frames": 9, "height": HEIGHT, "width": WIDTH,
             "num_target_seen": 2, "num_target_unseen": 2, "num_train_scenes": 100, "num_eval_scenes": 3,
             "eval_seed": 1, "shuffle_seed": 0, "worker_threads": 0, "on_error": "skip"}})
  config.lock()
  batch = next(make_train_iterator(config, process_index=0, process_count=1))
  assert batch["frames"].shape == (2, 9, HEIGHT, WIDTH, 3) and batch["target_images"].shape[:2] == (2, 4)
  held_out = eval_clips(config)
  assert [int(clip["scene_index"]) for clip in held_out] == [0, 1, 2]
  np.testing.assert_array_equal(held_out[1]["frames"], eval_clips(config)[1]["frames"])  # the same every run
  training_scene = SyntheticDataset(clip_spec(config), num_scenes=100, seed=0).scene(1)
  assert not np.array_equal(held_out[1]["viewmats"], training_scene.viewmats[:9])


def _synthetic(**fields):
  return {"source": "synthetic", "num_train_scenes": 6, "num_frames": 9, "height": HEIGHT, "width": WIDTH,
          "stride": [1, 2]} | fields


def _focal(batch):
  return np.round(batch["intrinsics"][:, 0, 0, 0], 3).tolist()


def test_mixture_reads_each_source_in_proportion_and_resumes():
  shared = {"num_frames": 9, "height": HEIGHT, "width": WIDTH, "batch_size": 4, "shuffle_seed": 5}
  alone = make_train_iterator(_synthetic(batch_size=4, shuffle_seed=5), process_index=0, process_count=1)
  one = {"sources": {"only": {"source": "synthetic", "num_train_scenes": 6, "stride": [1, 2], "weight": 2.0}}}
  single = make_train_iterator(shared | one, process_index=0, process_count=1)
  for _ in range(2):  # a one-source mixture reads exactly as the source alone
    want, got = next(alone), next(single)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  # Two sources told apart by their field of view (the intrinsics' focal length), weights 3 : 1.
  mixture = shared | {"sources": {
    "wide": {"source": "synthetic", "num_train_scenes": 6, "stride": [1, 2], "fov_deg": 70.0, "weight": 3.0,
             "num_eval_scenes": 2},
    "narrow": {"source": "synthetic", "num_train_scenes": 5, "seed": 9, "stride": 1, "fov_deg": 40.0, "weight": 1.0,
               "num_eval_scenes": 2}}}
  iterator = make_train_iterator(mixture, process_index=0, process_count=1)
  batches = [next(iterator) for _ in range(3)]
  focals = sum((_focal(batch) for batch in batches), [])
  assert len(set(focals)) == 2
  wide = max(set(focals), key=focals.count)
  assert focals.count(wide) == 9 and wide == min(focals)  # 3 : 1 of 12; the wider view has the shorter focal
  narrow_frames = [frames for batch in batches for frames, focal in zip(batch["frame_indices"], _focal(batch))
                   if focal != wide]
  assert all(np.all(np.diff(indices) == 1) for indices in narrow_frames)  # the narrow source's own stride

  state = iterator.get_state()
  json.dumps(state)
  expected = [next(iterator) for _ in range(3)]  # past the narrow source's first epoch (5 scenes)
  resumed = make_train_iterator(mixture, process_index=0, process_count=1)
  resumed.set_state(state)
  for want, got in zip(expected, [next(resumed) for _ in range(3)]):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  held_out = eval_clips(mixture)  # num_eval_scenes of each source, in source order
  assert len(held_out) == 4 and _focal({"intrinsics": np.stack([c["intrinsics"] for c in held_out])})[0] == wide


def test_mixture_config_from_a_locked_training_config_and_errors(re10k_root):
  config = ml_collections.ConfigDict({"train": {"batch_size": 2}, "data": {
    "num_frames": 9, "height": 24, "width": 24, "shuffle_seed": 0,
    "sources": {"re10k": {"source": "realestate10k", "root": ml_collections.config_dict.placeholder(str),
                          "weight": 1.0},
                "unused": {"source": "latents", "root": "nowhere", "weight": 0.0}}}})
  config.lock()
  config.data.sources.re10k.root = str(re10k_root)  # as --config.data.sources.re10k.root=... does
  (name, weight, merged), = source_configs(config)  # weight 0: left out (its missing cache is never opened)
  assert (name, weight, merged["source"], merged["format"]) == ("re10k", 1.0, "scenes", "realestate10k")
  assert next(make_train_iterator(config, process_index=0, process_count=1))["frames"].shape == (2, 9, 24, 24, 3)

  with pytest.raises(WonderlandError, match="sources.a.num_frames is shared by every source"):
    data_config({"sources": {"a": {"num_frames": 5}}})
  with pytest.raises(WonderlandError, match="sources.a: unknown key\\(s\\) wieght"):
    data_config({"sources": {"a": {"wieght": 1}}})
  with pytest.raises(WonderlandError, match="sources.source0.weight must be a number >= 0, got -1"):
    data_config({"sources": [{"weight": -1}]})
  with pytest.raises(WonderlandError, match="every source of the mixture has weight 0"):
    data_config({"sources": [{"weight": 0}]})
  with pytest.raises(WonderlandError, match="sources.b: source='scenes' needs 'root'"):
    data_config({"sources": {"a": {}, "b": {"source": "scenes"}}})
  with pytest.raises(WonderlandError, match="cannot mix latent caches with frame sources"):
    data_config({"sources": {"a": {}, "b": {"source": "latents", "root": "x"}}})
  with pytest.raises(WonderlandError, match="either 'root' \\(one source\\) or 'sources'"):
    data_config({"root": "x", "sources": {"a": {}}})
  with pytest.raises(WonderlandError, match="source='acid' but format='dl3dv'"):
    data_config({"source": "acid", "format": "dl3dv", "root": "x"})
  with pytest.raises(WonderlandError, match="posterior must be one of \\('mean', 'sample'\\)"):
    data_config({"posterior": "mode"})
  with pytest.raises(WonderlandError, match="no source of the mixture has held-out data"):
    eval_clips({"sources": {"a": {"source": "acid", "root": "x"}}})
