"""grain input pipelines over synthetic scenes, scene folders or a latent cache.

    iterator = make_train_iterator({"source": "synthetic", "batch_size": 8, "num_frames": 9})
    iterator = make_train_iterator(training_config)   # with training_config.data and .train.batch_size
    batch = next(iterator)                  # dict of numpy arrays with a leading batch axis
    state = iterator.get_state()            # small dict of ints: save it with the model checkpoint
    iterator.set_state(state)               # resumes with exactly the same next batches

The dataset is a `grain.MapDataset` of scene indices: sharded across processes (`index::count`, by
`jax.process_index()` / `jax.process_count()` by default), shuffled with the seed (a new order each epoch),
repeated `num_epochs` times (None: forever), then mapped to clips: the clip of scene s in epoch e is drawn
with `clips.clip_rng(shuffle_seed, s, e)`, so it does not depend on the number of hosts, threads or restarts.
Bad scenes give None, which grain drops (on_error='skip'). Batches are stacked per key (drop remainder);
`worker_threads` > 0 reads ahead with that many threads (JAX rendering and numpy release the GIL).
`eval_clips` gives the held-out clips (synthetic scenes of another seed, or the dataset at `eval_root`).

Mixtures: `sources` names several sources, each a data config of its own (over the top-level keys) with a
`weight`, mixed with `grain.MapDataset.mix` in proportion to the weights:

    data.sources = {"re10k": dict(source="realestate10k", root="re10k/train", weight=0.6, stride=(3, 8)),
                    "dl3dv": dict(source="dl3dv", root="dl3dv/train", weight=0.2, stride=(1, 3)),
                    "generated": dict(source="latents", root="cache/generated", weight=0.2)}

A source is 'synthetic', 'scenes' (with `format`), 'latents', or a format name ('realestate10k', 'acid',
'dl3dv', 'colmap'), short for source='scenes' with that format. Each source keeps its own stride (its clip
length in source frames), roots, image folders and synthetic settings; what a batch stacks (num_frames, the
image size, the supervision views, the normalisation) and what the iterator does (batch size, shuffling,
epochs, threads) is shared. A weight of 0 leaves a source out. Sources are sharded, shuffled and repeated each
on its own (source i with shuffle seed `shuffle_seed + i`, so a one-source mixture reads exactly as that
source alone), then mixed; the iterator state still resumes exactly. With num_epochs set, the mixture ends
with its first exhausted source. Frames and latents do not mix: make a latent cache of each frame source
(`wonderland prepare-latents`) to mix it with generated latents. Held-out clips (`eval_clips`) of a mixture:
`num_eval_scenes` from each source that has held-out data (synthetic, or an `eval_root`), in source order.

Latent caches hold the VAE posterior's mean and (when written with it) its standard deviation. `posterior`
says what a clip's `latents` are: 'mean' (the default: deterministic, as `encode_frames`), or 'sample', a
posterior sample drawn afresh per clip and epoch (mean + std * noise, noise from `clip_rng`): the latents the
video model generates behave like samples, not means. Caches of generated latents (`wonderland
generate-latents`) hold samples already and are read as they are either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

from wonderland_jax.camera.poses import DEFAULT_SCALE_FLOOR
from wonderland_jax.data.clips import ClipSource, ClipSpec, clip_rng
from wonderland_jax.data.latent_cache import EXTRA_KEYS, LatentCache
from wonderland_jax.data.scenes import FORMATS, DataErrors, scan_dataset
from wonderland_jax.data.synthetic import SyntheticDataset
from wonderland_jax.errors import WonderlandError

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "scenes", "latents")
POSTERIORS = ("mean", "sample")

# The data config (`config.data` of a training config) and its defaults: the tiny synthetic setting.
DATA_DEFAULTS: dict[str, Any] = {
  "source": "synthetic",       # 'synthetic' | 'scenes' | 'latents' (or a format name: 'scenes' in that format)
  "sources": None,             # a mixture: {name: {per-source keys, "weight": w}} (or a list); see above
  "format": None,              # scenes: 'realestate10k' | 'acid' | 'dl3dv' | 'colmap'
  "root": None,                # scenes: the dataset folder; latents: the cache folder
  "eval_root": None,           # scenes / latents: the held-out dataset or cache for `eval_clips`
  "images_dir": None,          # scenes: dl3dv 'images_4' etc., colmap image folder (see data.scenes)
  "check_scenes": False,       # scenes: parse every scene when scanning (else on first use)
  "on_error": "skip",          # bad scenes: 'skip' (log and count) or 'raise'
  "seed": 0,                   # synthetic: the training scenes' seed
  "num_train_scenes": 1000,    # synthetic: number of training scenes
  "eval_seed": 1,              # held-out clips: synthetic scenes' seed and clip sampling seed
  "num_eval_scenes": 8,        # held-out clips: how many
  "num_source_frames": 40,     # synthetic: cameras on each scene's path
  "num_gaussians": 384,        # synthetic: Gaussians per scene
  "fov_deg": 60.0,             # synthetic: horizontal field of view
  "synthetic_background": None,  # synthetic: None -> a random colour per scene, or a fixed (r, g, b)
  "camera_paths": "arc",       # synthetic: 'arc' (one arc family) or 'families' (synthetic.PATH_FAMILIES)
  "num_frames": 9,             # clip: F seen frames (1 + 4k)
  "height": 32,                # clip: image size
  "width": 32,
  "stride": None,              # clip: (min, max) stride, None -> per-dataset default
  "num_target_seen": 2,        # clip: supervision views from the clip
  "num_target_unseen": 2,      # clip: supervision views not in the clip
  "outside_margin": 0.5,       # clip: how far outside the clip unseen views may lie (fraction of its span)
  "scale_mode": "max_distance",  # clip: pose normalisation, camera.SCALE_MODES (docs/lalrm.md)
  "scale_target": 1.0,
  "scale_floor": DEFAULT_SCALE_FLOOR,  # clip: 'extent_floor''s smallest extent scaled to scale_target (data units)
  "batch_size": None,          # global batch (None: the training config's train.batch_size); each process
                               # gets batch_size // process_count
  "shuffle_seed": 0,           # scene order and clip sampling (clip_rng(shuffle_seed, scene, epoch))
  "shuffle": True,
  "num_epochs": None,          # None: repeat forever
  "worker_threads": 0,         # read-ahead threads (0: read in the calling thread)
  "prefetch_buffer_size": 4,   # elements read ahead by the threads
  "encode_frames": False,      # read by the trainer (encode `frames` with the VAE in the step), not here
  "posterior": "mean",         # latents: the cached posterior 'mean' or a fresh posterior 'sample' per clip
}
# What a mixture's sources share: what a batch stacks and what the iterator does (the rest is per source).
SHARED_FIELDS = ("num_frames", "height", "width", "num_target_seen", "num_target_unseen", "scale_mode",
                 "scale_target", "scale_floor", "batch_size", "shuffle_seed", "shuffle", "num_epochs",
                 "worker_threads", "prefetch_buffer_size", "encode_frames")
CLIP_FIELDS = ("num_frames", "height", "width", "stride", "num_target_seen", "num_target_unseen", "outside_margin",
               "scale_mode", "scale_target", "scale_floor")


def data_config(config: Mapping[str, Any] | Any) -> dict[str, Any]:
  """The data config merged over DATA_DEFAULTS, as a plain dict.

  `config` is either a data config (dict, ml_collections.ConfigDict, anything with `items()`) or a training
  config with a `data` entry; then a missing data `batch_size` comes from its `train.batch_size`. Unknown
  keys raise WonderlandError naming them.
  """
  if not hasattr(config, "items"):
    raise WonderlandError(f"data config must be a mapping, got {type(config).__name__}")
  items = dict(config.items())
  if "data" in items:  # a whole training config
    data = items["data"]
    if not hasattr(data, "items"):
      raise WonderlandError(f"config.data must be a mapping, got {type(data).__name__}")
    train = items.get("train") or {}
    items = dict(data.items())
    if items.get("batch_size") is None and "batch_size" in train:
      items["batch_size"] = train["batch_size"]
  unknown = sorted(set(items) - set(DATA_DEFAULTS))
  if unknown:
    raise WonderlandError(f"data config: unknown key(s) {', '.join(unknown)}; valid: {', '.join(DATA_DEFAULTS)}")
  merged = DATA_DEFAULTS | items
  if merged["sources"]:
    if merged["root"]:
      raise WonderlandError("data config: give either 'root' (one source) or 'sources' (a mixture), not both")
    merged["sources"] = _mixture_entries(merged["sources"])
    source_configs(merged)  # each source checked now
    return merged
  merged["sources"] = None
  if merged["source"] in FORMATS:  # 'realestate10k' -> scenes in that format
    if merged["format"] not in (None, merged["source"]):
      raise WonderlandError(f"data config: source={merged['source']!r} but format={merged['format']!r}")
    merged["source"], merged["format"] = "scenes", merged["source"]
  if merged["posterior"] not in POSTERIORS:
    raise WonderlandError(f"data config: posterior must be one of {POSTERIORS}, got {merged['posterior']!r}")
  if merged["source"] not in SOURCES:
    raise WonderlandError(f"data config: source must be one of {SOURCES + FORMATS}, got {merged['source']!r}")
  if merged["source"] != "synthetic" and not merged["root"]:
    raise WonderlandError(f"data config: source={merged['source']!r} needs 'root'")
  for key in ("root", "eval_root"):
    if merged[key] is not None:
      merged[key] = str(merged[key])
  if merged["stride"] is not None and not isinstance(merged["stride"], int):
    merged["stride"] = tuple(merged["stride"])
  return merged


def _mixture_entries(sources) -> dict[str, dict[str, Any]]:
  """`sources` ({name: entry} or a list of entries, named 'source0', ...) -> {name: entry as a plain dict}."""
  if hasattr(sources, "items"):
    named = list(sources.items())
  elif isinstance(sources, (list, tuple)):
    named = [(f"source{index}", entry) for index, entry in enumerate(sources)]
  else:
    raise WonderlandError(f"data config: sources must be a mapping of name -> source or a list, got "
                          f"{type(sources).__name__}")
  entries = {}
  for name, entry in named:
    if not hasattr(entry, "items"):
      raise WonderlandError(f"data config: sources.{name} must be a mapping, got {type(entry).__name__}")
    entries[str(name)] = dict(entry.items())
  return entries


def source_configs(config: Mapping[str, Any] | Any) -> list[tuple[str, float, dict[str, Any]]]:
  """The sources of a data (or training) config as (name, weight, data config): the config itself with weight
  1 when it has one source; a mixture's sources of weight > 0, each its entry over the shared top-level keys.
  Raises WonderlandError naming `sources.NAME.KEY` for an unknown, shared or bad key."""
  config = dict(config.items()) if hasattr(config, "items") else config
  if "data" in config or not config.get("sources"):
    merged = data_config(config)
    if not merged["sources"]:
      return [(str(merged["source"]), 1.0, merged)]
    config = merged
  per_source = set(DATA_DEFAULTS) - set(SHARED_FIELDS) - {"sources"}
  base = {key: value for key, value in config.items() if key in DATA_DEFAULTS and key != "sources"}
  base = base | {"source": "synthetic", "format": None, "root": None, "eval_root": None}
  configs = []
  for name, entry in _mixture_entries(config["sources"]).items():
    shared = sorted(set(entry) & set(SHARED_FIELDS))
    unknown = sorted(set(entry) - per_source - {"weight"} - set(SHARED_FIELDS))
    if shared:
      raise WonderlandError(f"data config: sources.{name}.{shared[0]} is shared by every source of a mixture "
                            f"(set data.{shared[0]} instead)")
    if unknown:
      raise WonderlandError(f"data config: sources.{name}: unknown key(s) {', '.join(unknown)}; valid: weight, "
                            f"{', '.join(sorted(per_source))}")
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight < 0:
      raise WonderlandError(f"data config: sources.{name}.weight must be a number >= 0, got {weight!r}")
    if weight == 0:
      continue
    try:
      merged = data_config(base | {key: value for key, value in entry.items() if key != "weight"})
    except WonderlandError as err:
      raise WonderlandError(f"data config: sources.{name}: {str(err).removeprefix('data config: ')}") from None
    configs.append((name, float(weight), merged))
  if not configs:
    raise WonderlandError("data config: every source of the mixture has weight 0")
  kinds = {merged["source"] == "latents" for _, _, merged in configs}
  if len(kinds) > 1:
    raise WonderlandError("data config: a mixture cannot mix latent caches with frame sources; make a latent cache "
                          "of each frame source with `wonderland prepare-latents`")
  return configs


def clip_spec(config: Mapping[str, Any] | Any) -> ClipSpec:
  """The `ClipSpec` of a data (or training) config."""
  config = data_config(config)
  spec = {field: config[field] for field in CLIP_FIELDS}
  if isinstance(spec["stride"], int):
    spec["stride"] = (spec["stride"], spec["stride"])
  return ClipSpec(**spec).validate()


def make_clip_source(config: Mapping[str, Any] | Any, *, held_out: bool = False
                     ) -> SyntheticDataset | ClipSource | LatentCache:
  """The random-access source a data (or training) config describes: `SyntheticDataset`, `ClipSource` over a
  scanned dataset, or `LatentCache`. The first two have `clip(index, rng)`; all have `len` and `[index]`.

  held_out: the evaluation source instead: synthetic scenes of `eval_seed` (`num_eval_scenes` of them), or
  the dataset / cache at `eval_root`.
  """
  config = data_config(config)
  if config["sources"]:
    raise WonderlandError("data config: a mixture (sources) has no single clip source; use source_configs")
  root = config["root"]
  if held_out and config["source"] != "synthetic":
    if not config["eval_root"]:
      raise WonderlandError(f"data config: held-out clips of source={config['source']!r} need 'eval_root'")
    root = config["eval_root"]
  if config["source"] == "latents":
    return LatentCache(root)
  spec = clip_spec(config)
  if config["source"] == "synthetic":
    return SyntheticDataset(spec, num_scenes=config["num_eval_scenes" if held_out else "num_train_scenes"],
                            seed=config["eval_seed" if held_out else "seed"],
                            num_source_frames=config["num_source_frames"], num_gaussians=config["num_gaussians"],
                            fov_deg=config["fov_deg"], background=config["synthetic_background"],
                            camera_paths=config["camera_paths"])
  if not config["format"]:
    raise WonderlandError("data config: source='scenes' needs 'format' (realestate10k, acid, dl3dv or colmap)")
  errors = DataErrors(config["on_error"])
  scan = scan_dataset(root, config["format"], on_error=errors, images_dir=config["images_dir"],
                      check=config["check_scenes"], min_frames=spec.num_frames)
  return ClipSource(scan.scenes, spec, seed=config["shuffle_seed"], on_error=errors)


def eval_clips(config: Mapping[str, Any] | Any) -> list[dict[str, np.ndarray]]:
  """The held-out clips of a data (or training) config: the first `num_eval_scenes` good ones of the held-out
  source (`make_clip_source(held_out=True)`), clip i drawn with clip_rng(eval_seed, i). The same in every run."""
  config = data_config(config)
  if config["sources"]:
    held_out = [merged for _, _, merged in source_configs(config)
                if merged["source"] == "synthetic" or merged["eval_root"]]
    if not held_out:
      raise WonderlandError("data config: no source of the mixture has held-out data (give one an 'eval_root')")
    return [clip for merged in held_out for clip in eval_clips(merged)]
  source = make_clip_source(config, held_out=True)
  load = _LoadClip(source, config["eval_seed"], len(source), config["posterior"])
  clips = []
  for index in range(len(source)):
    clip = load(index, index)  # the clip of scene i: clip_rng(eval_seed, i)
    if clip is not None:
      clips.append(clip)
    if len(clips) == config["num_eval_scenes"]:
      break
  if not clips:
    raise WonderlandError("data config: no held-out clip could be read (every scene was bad)")
  return clips


class _LoadClip:
  """(position in the repeated dataset, scene index) -> that scene's clip for the position's epoch.

  Latent cache records lose their `latents_std`; with posterior='sample' their `latents` become mean + std x
  noise (noise from the clip's Generator)."""

  def __init__(self, source, seed: int, epoch_length: int, posterior: str = "mean"):
    self.source, self.seed, self.epoch_length = source, int(seed), int(epoch_length)
    self.sample = posterior == "sample" and isinstance(source, LatentCache) and not source.holds_samples
    if self.sample and not source.has_std:
      raise WonderlandError(f"{source.directory}: posterior='sample' needs the posterior's std, which this cache "
                            "does not hold (written before it was stored); prepare it again or use posterior='mean'")

  def __call__(self, position: int, scene_index: int):
    rng = clip_rng(self.seed, scene_index, position // self.epoch_length)
    if hasattr(self.source, "clip"):
      return self.source.clip(int(scene_index), rng)
    record = self.source[int(scene_index)]
    std = record.pop("latents_std", None)
    for key in EXTRA_KEYS:
      record.pop(key, None)
    if self.sample:
      noise = rng.standard_normal(record["latents"].shape, dtype=np.float32)
      record["latents"] = record["latents"] + std.astype(np.float32) * noise
    return record


def make_dataset(source, *, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 shard_index: int | None = None, shard_count: int | None = None,
                 posterior: str = "mean") -> grain.MapDataset:
  """A MapDataset of clips (or None for skipped bad scenes) from a source of `make_clip_source`.

  shard_index / shard_count: this process's shard (default jax.process_index() / jax.process_count()).
  posterior: latent caches: 'mean' or 'sample' (see the module docstring).
  """
  shard_index = jax.process_index() if shard_index is None else int(shard_index)
  shard_count = jax.process_count() if shard_count is None else int(shard_count)
  if not 0 <= shard_index < shard_count:
    raise WonderlandError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
  if len(source) < shard_count:
    raise WonderlandError(f"{len(source)} scenes cannot be sharded over {shard_count} processes")
  dataset = grain.MapDataset.range(len(source))[shard_index::shard_count]
  epoch_length = len(dataset)
  if shuffle:
    dataset = dataset.shuffle(seed=seed)
  dataset = dataset.repeat(num_epochs)
  return dataset.map_with_index(_LoadClip(source, seed, epoch_length, posterior))


def make_iterator(source, *, batch_size: int, seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                  shard_index: int | None = None, shard_count: int | None = None, worker_threads: int = 0,
                  prefetch_buffer_size: int = 4) -> grain.DatasetIterator:
  """An iterator of batches (dicts of (batch_size, ...) numpy arrays) with get_state() / set_state().

  worker_threads > 0 reads `prefetch_buffer_size` examples ahead with that many threads.
  """
  dataset = make_dataset(source, seed=seed, shuffle=shuffle, num_epochs=num_epochs, shard_index=shard_index,
                         shard_count=shard_count)
  return _batches(dataset, batch_size, worker_threads, prefetch_buffer_size)


def _batches(dataset: grain.MapDataset, batch_size: int, worker_threads: int,
             prefetch_buffer_size: int) -> grain.DatasetIterator:
  if batch_size < 1:
    raise WonderlandError(f"batch_size must be >= 1, got {batch_size}")
  read_options = grain.ReadOptions(num_threads=int(worker_threads),
                                   prefetch_buffer_size=int(prefetch_buffer_size) if worker_threads else 0)
  return iter(dataset.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True))


def make_train_iterator(config: Mapping[str, Any] | Any, *, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """The training iterator of a data config, or of a training config with `data` and `train.batch_size`
  (keys and defaults: DATA_DEFAULTS).

  The batch size is global: each of the `process_count` processes (default jax.process_count()) yields
  batch_size // process_count examples from its own shard of the scenes.
  """
  config = data_config(config)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = config["batch_size"]
  if batch_size is None:
    raise WonderlandError("data config: no batch_size (set data.batch_size or train.batch_size)")
  if batch_size % process_count:
    raise WonderlandError(f"data config: batch_size={batch_size} is not divisible by the {process_count} processes")
  datasets, weights = [], []
  for position, (name, weight, merged) in enumerate(source_configs(config)):
    source = make_clip_source(merged)
    logger.info("data: %s (%s source) with %d items, weight %g, per-process batch %d", name, merged["source"],
                len(source), weight, batch_size // process_count)
    datasets.append(make_dataset(source, seed=config["shuffle_seed"] + position, shuffle=config["shuffle"],
                                 num_epochs=config["num_epochs"], shard_index=process_index,
                                 shard_count=process_count, posterior=merged["posterior"]))
    weights.append(weight)
  dataset = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights)
  return _batches(dataset, batch_size // process_count, config["worker_threads"], config["prefetch_buffer_size"])
