"""Features of whole image and video sets through the FID and FVD networks, and their statistics.

    features = fid_features(inception, images, batch_size=50)    # (N, H, W, 3) numpy -> (N, 2048) numpy
    stats = fid_statistics(inception, images)                    # streamed: the features are not kept
    features = fvd_features(i3d, videos, batch_size=8)           # (N, T, H, W, 3) numpy -> (N, 400) numpy
    fvd = frechet_video_distance(i3d, real_videos, fake_videos)  # float

The networks and their per-batch feature functions live in `wonderland_jax.models.inception` / `.i3d`; this
module runs them over a data set in fixed-size batches (`iter_batches`: the last batch is padded, so that one
compiled program serves every batch) and collects the features (`collect`) or their mean and covariance
(`accumulate`, `wonderland_jax.eval.frechet.FeatureStatistics`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval.frechet import FeatureStatistics, Statistics, frechet_distance
from wonderland_jax.models import i3d, inception
from wonderland_jax.progress import progress


def iter_batches(function: Callable[[np.ndarray], np.ndarray], data, *, batch_size: int,
                 sample_shape: Sequence[int | str], name: str, desc: str) -> Iterator[np.ndarray]:
  """Yields `function(batch)` (b, ...) numpy for consecutive `batch_size` slices of `data` (N, *sample_shape):
  a numpy array or anything sliceable into one. The last batch is padded to `batch_size` (by repeating its last
  sample) and its result cut back to its size. `sample_shape`: dimension names, or ints that must match (e.g.
  ("H", "W", 3)); `name` ("images") and `desc` (the progress description) name the data in errors."""
  shape = np.shape(data)
  if len(shape) != len(sample_shape) + 1 or any(isinstance(want, int) and got != want
                                                for got, want in zip(shape[1:], sample_shape)):
    raise WonderlandError(f"{desc}: {name} must have shape (N, {', '.join(map(str, sample_shape))}), got {shape}")
  if batch_size < 1:
    raise WonderlandError(f"{desc}: batch_size must be >= 1 (batch_size must be positive), got {batch_size}")
  starts = range(0, len(data), batch_size)
  for start in progress(starts, desc=desc, total=len(starts)):
    batch = np.asarray(data[start:start + batch_size])
    count = len(batch)
    if count < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
    yield np.asarray(function(batch))[:count]


def collect(batches: Iterable[np.ndarray], dim: int) -> np.ndarray:
  """The (N, dim) float32 concatenation of per-batch features ((0, dim) when there are none)."""
  parts = list(batches)
  return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def accumulate(batches: Iterable[np.ndarray], dim: int) -> Statistics:
  """The mean and covariance of per-batch (b, dim) features, streamed in float64 without keeping them."""
  stats = FeatureStatistics(dim)
  for part in batches:
    stats.add(part)
  return stats.result()


# ----------------------------------------------------------------------------------------------- FID


def _fid_batches(model: inception.FIDInception, images, batch_size: int, resize: bool, desc: str):
  return iter_batches(inception.feature_function(model, resize=resize), images, batch_size=batch_size,
                      sample_shape=("H", "W", 3), name="images", desc=desc)


def fid_features(model: inception.FIDInception, images, batch_size: int = 50, *, resize: bool = True,
                 desc: str = "FID features") -> np.ndarray:
  """images (N, H, W, 3), uint8 or float in [0, 1] (a numpy array or anything sliceable into one) -> pool3
  features (N, 2048) float32 numpy, `batch_size` images per jitted call."""
  return collect(_fid_batches(model, images, batch_size, resize, desc), inception.FEATURE_DIM)


def fid_statistics(model: inception.FIDInception, images, batch_size: int = 50, *, resize: bool = True,
                   desc: str = "FID statistics") -> Statistics:
  """The mean (2048,) and covariance (2048, 2048) of the pool3 features of images (N, H, W, 3), streamed in
  float64 without keeping the features; compare two with `wonderland_jax.eval.frechet.frechet_distance`."""
  return accumulate(_fid_batches(model, images, batch_size, resize, desc), inception.FEATURE_DIM)


# ----------------------------------------------------------------------------------------------- FVD


def _fvd_batches(model: i3d.I3D, videos, batch_size: int, resize: bool, features: str, desc: str):
  return iter_batches(i3d.feature_function(model, resize=resize, features=features), videos,
                      batch_size=batch_size, sample_shape=("T", "H", "W", 3), name="videos", desc=desc)


def fvd_features(model: i3d.I3D, videos, *, batch_size: int = 8, resize: bool = True,
                 features: str = "logits") -> np.ndarray:
  """Features (N, 400) ('logits', FVD's) or (N, 1024) ('pool'), float32 numpy, of videos (N, T, H, W, 3) in
  [0, 1] (float) or uint8 (a numpy array or anything sliceable into one), `batch_size` videos per jitted call."""
  dim = i3d.feature_dim(model, features)
  return collect(_fvd_batches(model, videos, batch_size, resize, features, "I3D features"), dim)


def fvd_statistics(model: i3d.I3D, videos, *, batch_size: int = 8, resize: bool = True,
                   features: str = "logits") -> Statistics:
  """The mean and covariance of `fvd_features(model, videos, ...)`, streamed (the features are not kept)."""
  dim = i3d.feature_dim(model, features)
  return accumulate(_fvd_batches(model, videos, batch_size, resize, features, "I3D statistics"), dim)


def frechet_video_distance(model: i3d.I3D, real_videos, fake_videos, *, batch_size: int = 8) -> float:
  """FVD: the Fréchet distance between the Gaussians of the I3D logits of two video sets (N, T, H, W, 3)."""
  return frechet_distance(fvd_statistics(model, real_videos, batch_size=batch_size),
                          fvd_statistics(model, fake_videos, batch_size=batch_size))
