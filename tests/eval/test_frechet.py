"""The Fréchet distance against pytorch-fid's formula (scipy's sqrtm of S_1 S_2) and streamed statistics."""

import numpy as np
import pytest
import scipy.linalg

from wonderland_jax.errors import WonderlandError
from wonderland_jax.eval.frechet import FeatureStatistics, feature_statistics, frechet_distance


def _pytorch_fid_distance(mu1, sigma1, mu2, sigma2):
  """pytorch-fid's calculate_frechet_distance (without its singular-product offset, not needed here)."""
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
  covmean = covmean.real
  diff = mu1 - mu2
  return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_matches_pytorch_fid_formula():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
  fake = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
  ours = frechet_distance(feature_statistics(real), feature_statistics(fake))
  reference = _pytorch_fid_distance(real.mean(0), np.cov(real, rowvar=False), fake.mean(0), np.cov(fake, rowvar=False))
  assert ours == pytest.approx(reference, rel=1e-8)
  assert frechet_distance(feature_statistics(real), feature_statistics(real)) == pytest.approx(0.0, abs=1e-8)


def test_streamed_statistics_equal_one_shot():
  rng = np.random.default_rng(1)
  features = rng.normal(size=(257, 8)) * 3 + 100  # an offset mean: the shifted moments keep float64 accurate
  stats = FeatureStatistics(8)
  for start in range(0, 257, 50):
    stats.add(features[start:start + 50])
  result = stats.result()
  np.testing.assert_allclose(result.mean, features.mean(0), rtol=1e-12)
  np.testing.assert_allclose(result.covariance, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
  assert result.count == 257


def test_gaussians_with_known_distance():
  # Two isotropic Gaussians N(0, I) and N(m, 4I): d^2 = |m|^2 + D (1 + 4 - 2 * 2) = |m|^2 + D.
  rng = np.random.default_rng(2)
  first = feature_statistics(rng.normal(size=(200_000, 4)))
  second = feature_statistics(rng.normal(size=(200_000, 4)) * 2 + np.array([1.0, 0, 0, 2.0]))
  assert frechet_distance(first, second) == pytest.approx(5.0 + 4.0, rel=0.01)


def test_errors():
  with pytest.raises(WonderlandError, match=r"shape \(N, 4\)"):
    FeatureStatistics(4).add(np.zeros((3, 5)))
  with pytest.raises(WonderlandError, match="at least 2"):
    feature_statistics(np.zeros((1, 4)))
  with pytest.raises(WonderlandError, match="NaN"):
    feature_statistics(np.full((3, 2), np.nan))
  with pytest.raises(WonderlandError, match="feature sizes differ"):
    frechet_distance(feature_statistics(np.eye(3)), feature_statistics(np.eye(4)))
