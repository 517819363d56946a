"""Input pipeline: seeded, resumable batches of float images in [-1, 1], sliced per host.

The batch of step s is a pure function of (seed, s): a killed run resumes at step s and sees
exactly the batches it would have seen. The photo stream is a concatenation of per-epoch
permutations, so every photo is seen once per epoch whatever the batch size. On a multi-host
job each process materialises only its own slice of each global batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np


class Batches:
  """Batches from images held in memory: u8[N, H, W, 3] -> f32[global_batch / P, H, W, 3]."""

  def __init__(self, images: np.ndarray, *, global_batch_size: int, seed: int,
               process_index: int | None = None, process_count: int | None = None,
               mirror: bool = False):
    if len(images) == 0:
      raise ValueError("no images to batch: the selected photo set is empty")
    if images.ndim != 4 or images.dtype != np.uint8:
      raise ValueError(f"images must be uint8[N, H, W, C], got {images.dtype}{list(images.shape)}")
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

  @property
  def steps_per_epoch(self) -> float:
    return len(self.images) / self.global_batch_size

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

  def at(self, step: int) -> np.ndarray:
    """This process's slice of the batch of `step`: f32[local_batch, H, W, 3] in [-1, 1]."""
    start = self.process_index * self.local_batch_size
    rows = self.global_indices(step)[start:start + self.local_batch_size]
    batch = self.images[rows].astype(np.float32) / 127.5 - 1.0
    if self.mirror:
      flips = np.random.default_rng([self.seed, 2**31 + step]).random(self.global_batch_size) < 0.5
      flips = flips[start:start + self.local_batch_size]
      batch[flips] = batch[flips, :, ::-1]
    return batch

  def iterate(self, start_step: int = 0, prefetch: int = 2) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (step, batch) from `start_step` on, preparing the next batches in a thread."""
    buffer: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def produce():
      step = start_step
      while not stop.is_set():
        item = (step, self.at(step))
        while not stop.is_set():
          try:
            buffer.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        step += 1

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
      while True:
        yield buffer.get()
    finally:
      stop.set()
