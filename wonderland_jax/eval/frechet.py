"""The Fréchet distance between Gaussians fitted to two feature sets: the statistic behind FID and FVD.

    stats = FeatureStatistics(2048)          # streamed: add batches of (N, 2048) features as they come
    stats.add(features_real)
    fd = frechet_distance(stats.result(), feature_statistics(features_fake))

d^2 = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), with S the unbiased sample covariance (N - 1), as
pytorch-fid (`calculate_frechet_distance`) and StyleGAN-V's FVD compute it. Everything is float64 numpy: these are
small dense matrices on the host, not a model.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wonderland_jax.errors import WonderlandError


@dataclasses.dataclass(frozen=True)
class Statistics:
  """mean: (D,), covariance: (D, D), count: how many feature vectors they came from."""

  mean: np.ndarray
  covariance: np.ndarray
  count: int


class FeatureStatistics:
  """Running first and second moments of (N, D) feature batches in float64, for sets too large to hold."""

  def __init__(self, dim: int):
    self.dim = dim
    self.count = 0
    self._sum = np.zeros(dim, np.float64)
    self._outer = np.zeros((dim, dim), np.float64)
    self._shift: np.ndarray | None = None  # the first vector: moments are taken about it, for float64 accuracy

  def add(self, features) -> None:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[1] != self.dim:
      raise WonderlandError(f"features must have shape (N, {self.dim}), got {features.shape}")
    if not np.all(np.isfinite(features)):
      raise WonderlandError("features contain NaN or inf (a diverged model or a broken input video?)")
    if len(features) == 0:
      return
    if self._shift is None:
      self._shift = features[0].copy()
    centred = features - self._shift
    self.count += len(features)
    self._sum += centred.sum(axis=0)
    self._outer += centred.T @ centred

  def result(self) -> Statistics:
    if self.count < 2:
      raise WonderlandError(f"a covariance needs at least 2 feature vectors, got {self.count}")
    mean_centred = self._sum / self.count
    covariance = (self._outer - self.count * np.outer(mean_centred, mean_centred)) / (self.count - 1)
    return Statistics(mean_centred + self._shift, (covariance + covariance.T) / 2, self.count)


def feature_statistics(features) -> Statistics:
  """(N, D) features -> their mean and unbiased covariance."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise WonderlandError(f"features must have shape (N, D), got {features.shape}")
  stats = FeatureStatistics(features.shape[1])
  stats.add(features)
  return stats.result()


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(first: Statistics, second: Statistics) -> float:
  """The squared Fréchet distance between N(mean, covariance) of two `Statistics`.

  tr((S_1 S_2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
  S_1^(1/2) S_2 S_1^(1/2) (the same eigenvalues as S_1 S_2): no complex parts to drop and no singular-matrix
  offset needed, unlike scipy's `sqrtm` of the non-symmetric product.
  """
  if first.mean.shape != second.mean.shape:
    raise WonderlandError(f"feature sizes differ: {first.mean.shape[0]} vs {second.mean.shape[0]}")
  root = _psd_sqrt(first.covariance)
  middle = root @ second.covariance @ root
  trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
  difference = first.mean - second.mean
  distance = difference @ difference + np.trace(first.covariance) + np.trace(second.covariance) - 2 * trace_sqrt
  return float(max(distance, 0.0))
