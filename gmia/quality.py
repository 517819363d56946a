"""Sample quality in a face encoder's space: the Fréchet distance between two sets of embeddings.

FID's formula (Heusel et al. 2017) with the face encoder in place of Inception: fit a Gaussian to
each set and take

  d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)).

tr((S_1 S_2)^(1/2)) is the sum of the square roots of the eigenvalues of S_1^(1/2) S_2 S_1^(1/2),
a symmetric positive semi-definite matrix with the same eigenvalues as S_1 S_2, so two symmetric
eigendecompositions replace the general matrix square root (scipy.linalg.sqrtm, which pytorch-fid
uses and which turns complex or inaccurate on the near-singular covariances of fewer samples than
dimensions). Eigenvalues that rounding makes slightly negative are clipped to 0.

Means and covariances accumulate over chunks of rows in float64 (`Moments`, merged with Chan,
Golub and LeVeque's pairwise update), so a set of 10^5 samples, or a stream of chunks, never needs
to be held at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Rows per chunk: 8,192 x 512 float64 is 34 MB.
DEFAULT_CHUNK_SIZE = 8192


@dataclasses.dataclass(frozen=True)
class Moments:
  """The first two moments of a set of embeddings: count rows, mean f64[D], scatter f64[D, D]
  (the sum of the outer products of the rows' deviations from the mean)."""

  count: int
  mean: np.ndarray
  scatter: np.ndarray

  @classmethod
  def of(cls, embeddings: np.ndarray) -> Moments:
    """The moments of one chunk of embeddings f[N, D] (N >= 1)."""
    embeddings = _check_embeddings(embeddings, "embeddings")
    mean = embeddings.mean(axis=0)
    deviations = embeddings - mean
    return cls(len(embeddings), mean, deviations.T @ deviations)

  def merge(self, other: Moments) -> Moments:
    """The moments of both sets together (Chan, Golub, LeVeque 1979): exact, with no
    cancellation between large sums of squares."""
    if other.mean.shape != self.mean.shape:
      raise ValueError(f"moments of {self.mean.shape[0]}-d and {other.mean.shape[0]}-d "
                       "embeddings cannot merge")
    count = self.count + other.count
    delta = other.mean - self.mean
    return Moments(count, self.mean + delta * (other.count / count),
                   self.scatter + other.scatter
                   + np.outer(delta, delta) * (self.count * other.count / count))

  @property
  def covariance(self) -> np.ndarray:
    """f64[D, D], unbiased (ddof = 1, as numpy.cov and pytorch-fid)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 embeddings, got {self.count}")
    return self.scatter / (self.count - 1)


def _check_embeddings(embeddings, name: str) -> np.ndarray:
  embeddings = np.asarray(embeddings)
  if embeddings.ndim != 2 or embeddings.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {embeddings.shape}")
  if not np.issubdtype(embeddings.dtype, np.floating):
    raise ValueError(f"{name} must be floating point, got {embeddings.dtype}")
  if not np.all(np.isfinite(embeddings)):
    raise ValueError(f"{name} hold non-finite values (NaN or inf)")
  return embeddings.astype(np.float64)


def moments(embeddings: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Moments:
  """The moments of embeddings f[N, D], accumulated over chunks of `chunk_size` rows."""
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  if np.ndim(embeddings) != 2 or np.shape(embeddings)[0] == 0:
    raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape "
                     f"{np.shape(embeddings)}")
  total = Moments.of(embeddings[:chunk_size])
  for start in range(chunk_size, len(embeddings), chunk_size):
    total = total.merge(Moments.of(embeddings[start:start + chunk_size]))
  return total


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix."""
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.maximum(values, 0.0))) @ vectors.T


def frechet_distance(first: Moments | np.ndarray, second: Moments | np.ndarray) -> float:
  """The squared Fréchet distance between the Gaussians fitted to two sets of embeddings (each
  f[N, D] with N >= 2, or its Moments); 0 for identical sets, > 0 otherwise."""
  first, second = (m if isinstance(m, Moments) else moments(m) for m in (first, second))
  if first.mean.shape != second.mean.shape:
    raise ValueError(f"the sets have different dimensions: {first.mean.shape[0]} and "
                     f"{second.mean.shape[0]}")
  cov_first, cov_second = first.covariance, second.covariance
  root = _sqrt_psd(cov_first)
  product = root @ cov_second @ root
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  trace_root = np.sum(np.sqrt(np.maximum(eigenvalues, 0.0)))
  difference = first.mean - second.mean
  distance = (difference @ difference + np.trace(cov_first) + np.trace(cov_second)
              - 2 * trace_root)
  return float(max(distance, 0.0))
