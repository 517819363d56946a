"""The Fréchet distance against pytorch-fid's formula with scipy.linalg.sqrtm."""

import numpy as np
import pytest
from scipy import linalg

from gmia import quality


def _correlated(rng, n, d, shift=0.0):
  mixing = rng.normal(size=(d, d)) / np.sqrt(d)
  return (rng.normal(size=(n, d)) @ mixing + shift).astype(np.float32)


def _sqrtm_reference(x, y):
  """pytorch-fid's calculate_frechet_distance on numpy.cov statistics, float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mu1, mu2 = x.mean(0), y.mean(0)
  sigma1, sigma2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = linalg.sqrtm(sigma1 @ sigma2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
               - 2 * np.trace(covmean))


def test_streamed_moments_match_numpy_cov_and_merge_in_any_order():
  rng = np.random.default_rng(0)
  x = _correlated(rng, 1003, 12, shift=100.0)  # a large mean: no cancellation in the scatter
  streamed = quality.moments(x, chunk_size=64)
  assert streamed.count == 1003
  np.testing.assert_allclose(streamed.mean, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(streamed.covariance, np.cov(x.astype(np.float64), rowvar=False),
                             rtol=1e-9, atol=1e-12)
  merged = quality.Moments.of(x[500:]).merge(quality.Moments.of(x[:500]))
  np.testing.assert_allclose(merged.scatter, streamed.scatter, rtol=1e-9)


@pytest.mark.parametrize("n, d, shift", [(300, 8, 0.0), (500, 32, 0.3), (2000, 16, 1.0)])
def test_frechet_distance_matches_scipy_sqrtm(n, d, shift):
  rng = np.random.default_rng(d)
  x, y = _correlated(rng, n, d), _correlated(rng, n + 17, d, shift)
  found = quality.frechet_distance(x, y)
  assert found == pytest.approx(_sqrtm_reference(x, y), rel=1e-8)
  assert found == pytest.approx(quality.frechet_distance(y, x), rel=1e-9)  # symmetric
  assert found > 0


def test_identical_sets_are_at_distance_zero_and_closed_forms_hold():
  rng = np.random.default_rng(1)
  x = _correlated(rng, 400, 16)
  assert quality.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)
  assert quality.frechet_distance(x, x[::-1].copy()) == pytest.approx(0.0, abs=1e-10)
  # Diagonal covariances: |mu_1 - mu_2|^2 + sum (sqrt(a) - sqrt(b))^2.
  a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
  first = quality.Moments(11, np.zeros(3), np.diag(a) * 10)
  second = quality.Moments(5, np.array([1.0, 0.0, 2.0]), np.diag(b) * 4)
  assert quality.frechet_distance(first, second) == pytest.approx(
      5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), rel=1e-12)


def test_fewer_samples_than_dimensions_stay_finite_and_symmetric():
  # Rank-deficient covariances, where sqrtm of the product is ill-conditioned.
  rng = np.random.default_rng(2)
  x, y = _correlated(rng, 20, 64), _correlated(rng, 30, 64, 0.1)
  forward, backward = quality.frechet_distance(x, y), quality.frechet_distance(y, x)
  assert np.isfinite(forward) and forward > 0
  assert forward == pytest.approx(backward, rel=1e-8)


def test_bad_inputs_are_refused():
  x = np.zeros((4, 3), np.float32)
  with pytest.raises(ValueError, match="non-empty"):
    quality.moments(np.zeros((0, 3)))
  with pytest.raises(ValueError, match="non-finite"):
    quality.frechet_distance(np.full((4, 3), np.nan), x)
  with pytest.raises(ValueError, match="different dimensions"):
    quality.frechet_distance(x, np.zeros((4, 2)))
  with pytest.raises(ValueError, match="at least 2 embeddings"):
    quality.frechet_distance(x[:1], x)
  with pytest.raises(ValueError, match="floating point"):
    quality.moments(np.zeros((4, 3), np.int32))
