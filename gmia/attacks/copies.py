"""Near-copies of training photos among a generator's samples (Carlini et al., USENIX Security
2023, "Extracting training data from diffusion models").

A sample x is a near-copy of its nearest training photo when that photo is much nearer than the
training photos around x are on average: with d_1 <= ... <= d_n the pixel distances from x to
its n nearest training photos, x is a copy when d_1 / mean(d_1 .. d_n) < delta (Carlini et al.:
n = 50, delta = 1/3). The ratio, not the distance itself, is compared, so a sample in a dense
region of similar photos is not called a copy of one of them. Distances are Euclidean on pixels
in [-1, 1], streamed by gmia.kernels (never samples x photos at once).
"""

from __future__ import annotations

import numpy as np

from gmia import kernels

NEIGHBOURS = 50
DELTA = 1.0 / 3.0


def copy_ratios(samples: np.ndarray, photos: np.ndarray, *,
                neighbours: int = NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
  """(ratio f64[N], nearest i64[N]): each sample's distance to its nearest photo over the mean
  distance to its `neighbours` nearest (at most the number of photos), and that photo's index.

  samples: f32|u8[N, H, W, C], photos: f32|u8[M, H, W, C], the same shape (u8 is read as
  0..255 and mapped to [-1, 1]).
  """
  if samples.shape[1:] != photos.shape[1:] or samples.ndim != 4:
    raise ValueError(f"samples and photos must be images of one shape, got {samples.shape} and "
                     f"{photos.shape}")
  if not len(samples) or len(photos) < 2:
    raise ValueError(f"near-copies need samples and at least 2 photos, got {len(samples)} and "
                     f"{len(photos)}")
  count = min(neighbours, len(photos))
  squared, nearest = kernels.top_k(_pixels(samples), _pixels(photos), count, metric="sqeuclidean")
  distances = np.sqrt(np.maximum(np.asarray(squared, np.float64), 0.0))
  mean = distances.mean(axis=1)
  ratio = np.where(mean > 0, distances[:, 0] / np.where(mean > 0, mean, 1.0), 0.0)
  return ratio, np.asarray(nearest)[:, 0].astype(np.int64)


def _pixels(images: np.ndarray) -> np.ndarray:
  """f32[N, H * W * C] in [-1, 1] of u8 (0..255) or float ([-1, 1]) images."""
  flat = np.asarray(images).reshape(len(images), -1).astype(np.float32)
  return flat / 127.5 - 1.0 if np.asarray(images).dtype == np.uint8 else flat


def count_copies(ratios: np.ndarray, delta: float = DELTA) -> int:
  """How many samples are near-copies: ratio below `delta`."""
  return int(np.sum(np.asarray(ratios) < delta))
