"""Audit: did a generator see this person's face? One person's photos against a population.

The person's photos and the reference photos of identities known *not* to be in the training set
(the split's non-members) are scored the same way against the same generated samples. Where the
person's score stands in that population is an empirical p-value: the chance that someone the
generator never saw matches its samples at least as closely.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from gmia import files
from gmia.attacks import identity_membership as im
from gmia.attacks import membership_job
from gmia.data import folders, photos
from gmia.face_encoder import evaluation

PERSON = -1  # Identity id of the audited person (no data-set identity is negative).
REPORT_FILE = "audit.json"


def default_config() -> ml_collections.ConfigDict:
  config = membership_job.default_config()
  config.photos_dir = ""        # A folder with the person's photos (face crops), or:
  config.dataset_identity = -1  # a data-set identity whose reference photos stand in for them.
  return config


def empirical_p_value(score: float, population: np.ndarray) -> float:
  """(1 + #population >= score) / (1 + N): never 0, exact under exchangeability."""
  if len(population) == 0:
    raise ValueError("the audit needs a population of non-member scores, got none")
  return float((1 + np.sum(population >= score)) / (1 + len(population)))


def verdict(p_value: float, population_size: int, score: float) -> str:
  """The result in plain words."""
  beaten = round((1 - p_value) * (population_size + 1))
  stance = ("very likely used to train the generator" if p_value <= 0.01 else
            "likely used to train the generator" if p_value <= 0.05 else
            "possibly used; the evidence is weak" if p_value <= 0.2 else
            "no evidence that it was used")
  return (f"Your face: {stance}. The generator's closest sample matches your photos with "
          f"similarity {score:.3f}, higher than it matches {beaten} of {population_size} people "
          f"known not to be in its training set (p = {p_value:.3g}).")


def run(config: ml_collections.ConfigDict, workdir: str, photos: np.ndarray | None = None) -> dict:
  """Audits one person; `photos` u8[P, H, W, 3] or, when None, from config (folder or identity)."""
  target = membership_job.load_target(config)
  if photos is None:
    photos = _photos_from_config(config, target)
  if len(photos) == 0:
    raise ValueError("no photos of the person to audit")
  non_members = target.split.identities("non_members")
  if config.dataset_identity >= 0:
    non_members = non_members[non_members != config.dataset_identity]
  population = target.arrays.select(np.concatenate(
      [target.split.reference[int(i)] for i in non_members]))
  embeddings = evaluation.embed_images(target.encoder.model, target.encoder.variables,
                                       np.concatenate([photos, population.images]), target.mesh)
  identity = np.concatenate([np.full(len(photos), PERSON), population.identity])
  photo_ids = np.concatenate([-1 - np.arange(len(photos)), population.photo_id])
  refs = im.make_references(embeddings, identity, photo_ids, np.array([PERSON]), non_members)
  threshold = im.impostor_threshold(refs.embeddings, refs.identity, config.false_accept_rate,
                                    seed=config.seed)
  evidence, _ = membership_job.stream_evidence(config, target, refs, threshold,
                                               os.path.join(workdir, "state"))
  scores = im.scores(evidence, config.score)
  p_value = empirical_p_value(scores[0], scores[1:])
  result = {"score": float(scores[0]), "variant": config.score, "p_value": p_value,
            "population_size": int(len(scores) - 1), "num_photos": int(len(photos)),
            "num_samples": int(evidence.num_samples), "closest_sample": int(evidence.best_sample[0]),
            "verdict": verdict(p_value, len(scores) - 1, float(scores[0])),
            "config": config.to_dict()}
  files.write_json(os.path.join(workdir, REPORT_FILE), result)
  return result


def _photos_from_config(config: ml_collections.ConfigDict, target) -> np.ndarray:
  if bool(config.photos_dir) == (config.dataset_identity >= 0):
    raise ValueError("give exactly one of photos_dir and dataset_identity")
  if config.dataset_identity >= 0:
    if config.dataset_identity not in target.split.reference:
      raise ValueError(f"identity {config.dataset_identity} is no target of the split: it has no "
                       "reference photos")
    return target.arrays.select(target.split.reference[config.dataset_identity]).images
  resolution = target.arrays.resolution
  read = photos.Reader().read(photos.list_photos(config.photos_dir),
                              prepare=lambda image: folders.fit_photo(image, resolution, None))
  if not read.images:
    raise ValueError(f"no readable photos ({'/'.join(photos.EXTENSIONS)}) in {config.photos_dir}: "
                     f"{read.summary()}")
  return np.stack(read.images)
