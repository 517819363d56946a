"""Audit: did a generator see this person's face? The one-person case of the membership attack.

The person's photos (a folder, or a gmia split identity standing in) and those of a population
of people known *not* to be in the training set (population_dir, or a gmia split's
non-members) are scored the same way against the same generated samples. Where the person's
score stands in that population is an empirical p-value: the chance that someone the generator
never saw matches its samples at least as closely.
"""

from __future__ import annotations

import os
import time

import ml_collections

from gmia import files
from gmia.jobs import membership, page_builders, page_parts
from gmia.attacks import people as people_lib
from gmia.data import photos as photo_files
from gmia.workdir import exclusive

REPORT_FILE = "audit.json"


def default_config() -> ml_collections.ConfigDict:
  config = membership.default_config()
  config.photos_dir = ""        # A folder with the person's photos, or:
  config.dataset_identity = -1  # a gmia split identity whose reference photos stand in.
  return config


def min_p_value(population_size: int) -> float:
  """The smallest p-value a population of this size can give: 1 / (N + 1)."""
  return 1.0 / (population_size + 1)


def verdict(p_value: float, population_size: int, score: float) -> str:
  """The result in plain words, with what the population's size lets it say."""
  beaten = round((1 - p_value) * (population_size + 1))
  stance = ("very likely used to train the generator" if p_value <= 0.01 else
            "likely used to train the generator" if p_value <= 0.05 else
            "possibly used; the evidence is weak" if p_value <= 0.2 else
            "no evidence that it was used")
  text = (f"Your face: {stance}. The generator's closest sample matches your photos with "
          f"similarity {score:.3f}, higher than it matches {beaten} of {population_size} people "
          f"known not to be in its training set (p = {p_value:.3g}).")
  floor = min_p_value(population_size)
  if floor > 0.01:
    text += (f" With {population_size} people in that population no result could have gone "
             f"below p = {floor:.3g}: a larger population can say more.")
  return text


def audit_people(config: ml_collections.ConfigDict, source, embedder, mesh) -> people_lib.People:
  """The person (group "target") and the population."""
  if bool(config.photos_dir) == (config.dataset_identity >= 0):
    raise ValueError("give exactly one of photos_dir (the person's photos) and dataset_identity")
  if config.dataset_identity >= 0 or not config.population_dir:
    split = people_lib.split_people(config, source, embedder, mesh)
    person = str(config.dataset_identity)
    if config.dataset_identity >= 0 and person not in split.refs.names:
      raise ValueError(f"identity {person} is no member or non-member of the split: it has no "
                       "reference photos")
    population = {n: "population" for n, g in zip(split.refs.names.tolist(),
                                                   split.refs.group.tolist())
                  if g == "population" and n != person}
    if config.dataset_identity >= 0:
      return split.select({person: "target", **population})
    population_people = split.select(population)
  else:
    population_people = people_lib.folder_people({config.population_dir: "population"},
                                                 embedder, mesh)
  name = os.path.basename(os.path.normpath(config.photos_dir))
  paths = photo_files.files_in(config.photos_dir)
  if not paths:
    raise ValueError(f"no photos ({'/'.join(photo_files.EXTENSIONS)}) in {config.photos_dir}")
  person_people = people_lib.photo_people([(path, name, "target") for path in paths],
                                          embedder, mesh)
  return people_lib.merge(person_people, population_people)


@exclusive
def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Audits one person: the attack's files, audit.json (the verdict) and its page in
  `workdir`."""
  started = time.perf_counter()
  summary = membership.run(config, workdir, audit_people)
  (person,) = summary["ranking"]
  population = summary["people"]["population"]
  result = {"person": person["name"], "score": person["score"], "variant": config.score,
            "p_value": person["p_value"], "population_size": population,
            "min_p_value": min_p_value(population),
            # The person's photos against the population's photos (gmia.attacks.set_test):
            # more power, but it counts correlated photos as independent evidence.
            "set_p_value": person["set_p_value"],
            "photos": summary["photos"], "num_samples": summary["num_samples"],
            "usable_samples": summary["usable_samples"],
            "verdict": verdict(person["p_value"], population, person["score"]),
            # The page's evidence: the nearest samples (drawable again with the seed and
            # chunk size) and the population's scores around the person's.
            "nearest": person["nearest"], "chunk_size": summary["chunk_size"],
            "population_scores": summary["population_scores"],
            "config": config.to_dict()}
  result["provenance"] = page_parts.provenance(workdir, config,
                                                  time.perf_counter() - started)
  files.write_json(os.path.join(workdir, REPORT_FILE), result)
  page_parts.write_page(workdir, page_builders.audit_page, result,
                           config.report_photos)
  return result
