"""The jobs' outcomes, not their plumbing: a generator that memorised people exposes them, its
control does not; the release filter drops exactly the samples above its threshold; the audit's
p-value and verdict follow from its scores.

The "generators" are image sources (images:): the people's own photos with a little noise (a
generator that memorised them) or other people's photos (one that never saw them). People come
as identity folders: 4 tested people and a population of 30, enough for a p-value below 0.05.
"""

import csv
import os

import numpy as np
import pytest
from PIL import Image

import gmia.data
from gmia import metrics
from gmia.attacks import identity_membership as im
from gmia.jobs import audit, membership, release_filter

MEMBERS, POPULATION, OTHERS = 4, 30, 10


def _save_people(root, arrays, identities):
  for identity in identities.tolist():
    folder = root / f"person{identity}"
    folder.mkdir(parents=True)
    for photo, image in zip(arrays.photo_id[arrays.identity == identity],
                            arrays.images[arrays.identity == identity]):
      Image.fromarray(image).save(folder / f"{photo}.png")
  return str(root)


def _samples(path, images, copies, seed):
  """An images: source of `images` repeated `copies` times with noise of 2/255, shuffled; and
  i64[N] the index in `images` of each sample."""
  rng = np.random.default_rng(seed)
  stacked = np.concatenate([images] * copies).astype(np.float32)
  noisy = np.clip(np.rint(stacked + rng.normal(0, 2, stacked.shape)), 0, 255).astype(np.uint8)
  order = rng.permutation(len(noisy))
  np.savez(path, images=noisy[order])
  return f"images:{path}", order % len(images)


@pytest.fixture(scope="module")
def world(models, tmp_path_factory):
  root = tmp_path_factory.mktemp("outcomes")
  arrays = gmia.data.load("synthetic_faces", data_dir=str(root / "tfds"), resolution=32,
                          identities=MEMBERS + POPULATION + OTHERS, photos=4, seed=3)
  ids = np.unique(arrays.identity)
  members, population, others = np.split(ids, [MEMBERS, MEMBERS + POPULATION])
  of = lambda people: arrays.images[np.isin(arrays.identity, people)]
  return {
      "members_dir": _save_people(root / "members", arrays, members),
      "population_dir": _save_people(root / "population", arrays, population),
      "first_member_dir": os.path.join(root / "members", f"person{members[0]}"),
      "first_member": f"person{members[0]}",
      # Memorised: every member's photos (the first 16 images), among other people's.
      "target": _samples(root / "target.npz", np.concatenate([of(members), of(others)]), 2, 0),
      # Planted: one member's photos only, among other people's.
      "planted": _samples(root / "planted.npz", np.concatenate([of(members[:1]), of(others)]),
                          2, 1)[0],
      # The control: other people only.
      "control": _samples(root / "control.npz", of(others), 4, 2)[0],
      "encoder": models[1],
  }


def _config(world, generator, defaults=membership.default_config):
  config = defaults()
  config.generator = generator
  config.matcher.path = world["encoder"]
  config.members_dir, config.population_dir = world["members_dir"], world["population_dir"]
  config.num_samples = 88  # The planted source's: (4 + 40 photos) x 2.
  config.chunk_size, config.topk, config.bootstrap_resamples = 32, 3, 50
  return config


def _scores(workdir):
  with open(os.path.join(workdir, "scores.csv")) as handle:
    return list(csv.DictReader(handle))


def test_a_planted_member_ranks_first_under_every_variant(world, tmp_path):
  membership.run(_config(world, world["planted"]), str(tmp_path))
  rows = _scores(str(tmp_path))
  for variant in im.VARIANTS:
    top = max(rows, key=lambda row: float(row[f"score_{variant}"]))
    assert top["identity"] == world["first_member"], (variant, top)


def test_a_memorising_generator_exposes_its_members_and_its_control_does_not(world, tmp_path):
  target = membership.run(_config(world, world["target"][0]), str(tmp_path / "target"))
  control = membership.run(_config(world, world["control"]), str(tmp_path / "control"))
  for variant in ("best", "topk_mean", "density"):
    assert target["metrics"][variant]["auc"] == pytest.approx(1.0), variant
    # 4 members among 30 others who were never seen either: the control is no better than a
    # draw of 4 people would be.
    assert control["metrics"][variant]["auc_interval"][0] < 0.5, variant
  # The person-level test on each member's photos: far below the population's own p-values.
  ranked = {entry["name"]: entry for entry in target["ranking"]}
  assert all(ranked[name]["set_p_value"] < 0.01 for name in ranked)


def test_the_release_filter_drops_exactly_the_samples_above_its_threshold(world, tmp_path):
  generator, source_image = world["target"]
  config = _config(world, generator, release_filter.default_config)
  config.training_dir, config.members_dir, config.population_dir = world["members_dir"], "", ""
  result = release_filter.run(config, str(tmp_path))
  with np.load(tmp_path / "kept.npz") as kept:
    kept_ids = set(kept["sample"].tolist())
  # Every sample's best similarity to a training photo, recomputed from the embeddings.
  job = membership.setup(config, release_filter.training_people)
  ids, embeddings = job.samples.embed(np.arange(config.num_samples))
  best = np.max(embeddings.astype(np.float64) @ job.people.refs.embeddings.T.astype(np.float64),
                axis=1)
  threshold = result["threshold"]
  assert len(ids) == config.num_samples and 0 < result["dropped"] < config.num_samples
  for sample, similarity in zip(ids.tolist(), best.tolist()):
    if abs(similarity - threshold) > 1e-5:  # Not decided by float rounding.
      assert (sample in kept_ids) == (similarity <= threshold), (sample, similarity, threshold)
  # Every copy of a member's photo is dropped.
  copies = np.flatnonzero(source_image[:config.num_samples] < MEMBERS * 4)
  assert len(copies) > 10 and not kept_ids & set(copies.tolist())


# The verdict's bands: the first whose bound the p-value does not exceed.
BANDS = ((0.01, "very likely used"), (0.05, "likely used"), (0.2, "possibly used"),
         (1.0, "no evidence"))


@pytest.mark.parametrize("generator", ["planted", "control"])
def test_the_audits_p_value_and_verdict_follow_from_its_scores(world, tmp_path, generator):
  config = _config(world, world[generator], audit.default_config)
  config.photos_dir, config.members_dir = world["first_member_dir"], ""
  result = audit.run(config, str(tmp_path))
  rows = _scores(str(tmp_path))
  population = np.array([float(r["score_best"]) for r in rows if r["group"] == "population"])
  (person,) = [float(r["score_best"]) for r in rows if r["group"] == "target"]
  assert len(population) == POPULATION
  p_value = (1 + np.sum(population >= person)) / (1 + len(population))
  assert result["p_value"] == pytest.approx(p_value)
  band = next(words for bound, words in BANDS if p_value <= bound)
  assert f"Your face: {band}" in result["verdict"], result["verdict"]
  if generator == "planted":
    assert p_value == pytest.approx(1 / (1 + POPULATION))  # Above every population person.
    assert metrics.auc(np.r_[person, population], np.r_[True, np.zeros(POPULATION, bool)]) == 1.0
