"""Batches of people for person-level DP-SGD: Poisson-sampled identities and a few of their photos.

Step s samples each person independently with probability q = people_per_step / people; when
more than `max_people` are sampled it keeps a uniformly random `max_people` of them (the
truncated Poisson sampling that `gmia.privacy.accounting` composes). Each kept person brings at
most `max_photos` of their photos, a random subset drawn (with their mirror flips) from
(seed, s, identity) alone, so what a person contributes never depends on who else is in the data.
A batch has a fixed shape, people in `slots` rows of `max_photos` photos with a mask of the real
ones, so the training step compiles once; unused rows and photo places are zeros with mask 0.

Like `gmia.data.pipeline.Batches`, the batch of step s is a pure function of (seed, s), and each
process materialises only its slice of the rows.
"""

from __future__ import annotations

import jax
import numpy as np

# Streams of np.random.default_rng([seed, stream, ...]), apart from the data pipeline's.
_PEOPLE_STREAM, _PHOTO_STREAM = 2**32 + 1, 2**32 + 2


class PersonBatches:
  """Step -> this process's rows of {"images": f32[slots / P, max_photos, H, W, 3] in [-1, 1],
  "mask": f32[slots / P, max_photos]} for P processes.

  images: u8[N, H, W, 3] the training photos; identity: i64[N] whose each one is.
  """

  def __init__(self, images: np.ndarray, identity: np.ndarray, *, people_per_step: float,
               max_people: int | None, max_photos: int, slots: int, seed: int,
               mirror: bool = False, process_index: int | None = None,
               process_count: int | None = None):
    if images.ndim != 4 or images.dtype != np.uint8 or not len(images):
      raise ValueError(f"images must be a non-empty uint8[N, H, W, C], got {images.dtype}"
                       f"{list(images.shape)}")
    if identity.shape != (len(images),):
      raise ValueError(f"identity has shape {identity.shape}, expected ({len(images)},)")
    self.people, rows_of = np.unique(identity, return_inverse=True)
    order = np.argsort(rows_of, kind="stable")
    self._rows = np.split(order, np.cumsum(np.bincount(rows_of))[:-1])
    self.rate = people_per_step / len(self.people)
    if not 0 < self.rate <= 1:
      raise ValueError(f"people_per_step={people_per_step} must be in (0, {len(self.people)}] "
                       "(the people in the photos)")
    self.max_people = len(self.people) if max_people is None else min(max_people,
                                                                       len(self.people))
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if slots < self.max_people or slots % self.process_count:
      raise ValueError(f"slots={slots} must hold the {self.max_people} people a step may keep "
                       f"and be divisible by the {self.process_count} processes")
    if max_photos < 1:
      raise ValueError(f"max_photos must be positive, got {max_photos}")
    self.images, self.max_photos, self.slots = images, max_photos, slots
    self.seed, self.mirror = seed, mirror

  def people_at(self, step: int) -> np.ndarray:
    """i64[K]: positions (into `people`, ascending) of the people step `step` keeps."""
    rng = np.random.default_rng([self.seed, _PEOPLE_STREAM, step])
    sampled = np.flatnonzero(rng.random(len(self.people)) < self.rate)
    if len(sampled) > self.max_people:
      sampled = np.sort(rng.choice(sampled, self.max_people, replace=False))
    return sampled

  def rows_at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(i64[slots, max_photos] rows of `images`, -1 where empty; bool[slots, max_photos] flips)."""
    rows = np.full((self.slots, self.max_photos), -1, np.int64)
    flips = np.zeros((self.slots, self.max_photos), bool)
    for slot, person in enumerate(self.people_at(step)):
      rng = np.random.default_rng([self.seed, _PHOTO_STREAM, step, int(self.people[person])])
      own = self._rows[person]
      if len(own) > self.max_photos:
        own = np.sort(rng.choice(own, self.max_photos, replace=False))
      rows[slot, :len(own)] = own
      if self.mirror:
        flips[slot, :len(own)] = rng.random(len(own)) < 0.5
    return rows, flips

  def at(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the batch of step `step`."""
    local = self.slots // self.process_count
    rows, flips = (a[self.process_index * local:(self.process_index + 1) * local]
                   for a in self.rows_at(step))
    mask = rows >= 0
    images = np.zeros(rows.shape + self.images.shape[1:], np.float32)
    images[mask] = self.images[rows[mask]].astype(np.float32) / 127.5 - 1.0
    images[flips] = images[flips][:, :, ::-1]
    return {"images": images, "mask": mask.astype(np.float32)}
