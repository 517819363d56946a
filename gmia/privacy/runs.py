"""What a DP trainer needs around its step: the run's privacy plan and its batches of people.

Shared by every trainer with a `privacy` block (gmia.gan, gmia.diffusion). `run_plan` makes the
plan (gmia.privacy.accounting.plan) a workdir trains under: a resumed run keeps the noise
multiplier it started with, so one that asks for more steps than its target epsilon allows at
that noise is refused before training. `person_batches` samples a run's people
(gmia.privacy.sampling) with a slot for the most people a step keeps, rounded up to the devices.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from gmia.checkpoint import Checkpointer, CorruptCheckpointError
from gmia.data.arrays import FaceArrays
from gmia.privacy import accounting
from gmia.privacy.sampling import PersonBatches


def saved_noise_multiplier(workdir: str) -> float | None:
  """The noise multiplier of the DP run whose checkpoints `workdir` holds (None: none yet, or a
  run without privacy, which the loop refuses to continue privately)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  checkpointer = Checkpointer(workdir, read_only=True)
  try:
    for step in reversed(checkpointer.all_steps()):
      try:
        privacy = checkpointer.restore_meta(step).get("privacy")
      except CorruptCheckpointError:
        continue  # The loop sets it aside; an older step of the run has the same plan.
      return None if privacy is None else float(privacy["noise_multiplier"])
  finally:
    checkpointer.close()
  return None


def run_plan(privacy: ml_collections.ConfigDict, workdir: str, *, people: int, steps: int,
             r1_steps: int = 0) -> dict[str, Any]:
  """The privacy metadata of the run in `workdir` (see gmia.privacy.accounting.plan), at the
  noise multiplier it started with when it is resumed. ValueError when over budget."""
  saved = saved_noise_multiplier(workdir)
  try:
    return accounting.plan(privacy, people=people, steps=steps, r1_steps=r1_steps,
                           noise_multiplier=saved)
  except ValueError as error:
    if saved is None:
      raise
    raise ValueError(f"{workdir} was trained at noise multiplier {saved:.6g}, which a resumed "
                     f"run keeps: {error}") from None


def person_batches(config: ml_collections.ConfigDict, photos: FaceArrays,
                   num_devices: int) -> PersonBatches:
  """The people batches of a trainer's `config` (its privacy block, seed and mirror) over
  `photos`, with slots for the most people a step keeps, rounded up to the devices."""
  people = len(np.unique(photos.identity))
  most = accounting.max_people(config.privacy, people) or people
  return PersonBatches(
      photos.images, photos.identity, people_per_step=config.privacy.people_per_step,
      max_people=most, max_photos=config.privacy.max_photos_per_person,
      slots=-(-most // num_devices) * num_devices, seed=config.seed, mirror=config.mirror)
