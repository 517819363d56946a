"""FaceArrays: a face data set held in memory as three aligned numpy arrays."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FaceArrays:
  """Photos with identity labels.

  images: u8[N, H, W, 3]; identity: i64[N]; photo_id: i64[N], unique within the data set.
  """

  images: np.ndarray
  identity: np.ndarray
  photo_id: np.ndarray

  def __post_init__(self):
    n = len(self.images)
    if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
      raise ValueError(f"images must be uint8[N, H, W, 3], got {self.images.dtype}"
                       f"{list(self.images.shape)}")
    if self.identity.shape != (n,) or self.photo_id.shape != (n,):
      raise ValueError(f"identity {self.identity.shape} and photo_id {self.photo_id.shape} must "
                       f"both have shape ({n},) to match {n} images")

  def __len__(self) -> int:
    return len(self.images)

  @property
  def resolution(self) -> int:
    return self.images.shape[1]

  @property
  def num_identities(self) -> int:
    return len(np.unique(self.identity))

  def select(self, photo_ids: np.ndarray) -> FaceArrays:
    """The photos with the given ids, in the given order; unknown ids are an error."""
    photo_ids = np.asarray(photo_ids, np.int64)
    order = np.argsort(self.photo_id)
    positions = np.searchsorted(self.photo_id, photo_ids, sorter=order)
    positions = np.clip(positions, 0, len(order) - 1)
    rows = order[positions]
    missing = self.photo_id[rows] != photo_ids if len(self) else np.ones(len(photo_ids), bool)
    if np.any(missing):
      raise ValueError(f"{int(missing.sum())} photo ids are not in the data set, e.g. "
                       f"{photo_ids[missing][:5].tolist()}")
    return FaceArrays(self.images[rows], self.identity[rows], self.photo_id[rows])
