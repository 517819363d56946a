"""Input pipeline: seeded, resumable batches of float images in [-1, 1], sliced per host.

The batch of step s is a pure function of (seed, s): a killed run resumes at step s and sees
exactly the batches it would have seen. The photo stream is a concatenation of per-epoch
permutations, so every photo is seen once per epoch whatever the batch size. On a multi-host
job each process materialises only its own slice of each global batch (the training loop
prefetches and assembles them, gmia.training).
"""

from __future__ import annotations

import jax
import numpy as np


class Batches:
  """Batches from images held in memory: u8[N, H, W, 3] -> f32[global_batch / P, H, W, 3],
  with their labels i32[global_batch / P] when `labels` (one per image) are given."""

  def __init__(self, images: np.ndarray, *, global_batch_size: int, seed: int,
               process_index: int | None = None, process_count: int | None = None,
               mirror: bool = False, labels: np.ndarray | None = None):
    if len(images) == 0:
      raise ValueError("no images to batch: the selected photo set is empty")
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8[N, H, W, C], got {images.dtype}{list(images.shape)}")
    if labels is not None and len(labels) != len(images):
      raise ValueError(f"{len(labels)} labels for {len(images)} images")
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size <= 0 or global_batch_size % self.process_count:
      raise ValueError(f"global batch size {global_batch_size} must be positive and divisible by "
                       f"the {self.process_count} processes")
    self.images = images
    self.global_batch_size = global_batch_size
    self.local_batch_size = global_batch_size // self.process_count
    self.seed = seed
    self.mirror = mirror
    self.labels = labels

  def global_indices(self, step: int) -> np.ndarray:
    """i64[global_batch]: which photos make up the global batch of `step`."""
    n = len(self.images)
    positions = step * self.global_batch_size + np.arange(self.global_batch_size, dtype=np.int64)
    epochs, within = np.divmod(positions, n)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      permutation = np.random.default_rng([self.seed, int(epoch)]).permutation(n)
      mask = epochs == epoch
      indices[mask] = permutation[within[mask]]
    return indices

  def at(self, step: int) -> dict[str, np.ndarray]:
    """This process's slice of the batch of `step`: {"images": f32[local_batch, H, W, 3] in
    [-1, 1]} and, with labels, {"labels": their labels}."""
    start = self.process_index * self.local_batch_size
    rows = self.global_indices(step)[start:start + self.local_batch_size]
    images = self.images[rows].astype(np.float32) / 127.5 - 1.0
    if self.mirror:
      flips = np.random.default_rng([self.seed, 2**31 + step]).random(self.global_batch_size) < 0.5
      flips = flips[start:start + self.local_batch_size]
      images[flips] = images[flips, :, ::-1]
    if self.labels is None:
      return {"images": images}
    return {"images": images, "labels": self.labels[rows]}
