"""Calibrated identity scores and per-person exposure against direct numpy computations."""

import numpy as np
import pytest

from gmia import files
from gmia.attacks import calibration, exposure
from gmia.jobs import calibration as calibration_job
from gmia.data.arrays import FaceArrays
from gmia.data.split import make_split


def _unit(rng, n, d=8):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_population_similarity_is_each_identitys_best_match_to_other_peoples_photos():
  rng = np.random.default_rng(0)
  identity = np.array([0, 0, 1, 2, 2, 2, 3, 1, 4, 4, 0, 3, 2])
  embeddings = _unit(rng, len(identity))
  mean, std = calibration.population_similarity(embeddings, identity, 5, block=4)
  for i in range(5):
    own = embeddings[identity == i]
    others = embeddings[identity != i]
    best = np.array([max(float(np.dot(r, p)) for r in own) for p in others])
    assert mean[i] == pytest.approx(best.mean(), abs=1e-6)
    assert std[i] == pytest.approx(best.std(), abs=1e-6)
  with pytest.raises(ValueError, match="at least two identities"):
    calibration.population_similarity(embeddings[:2], np.zeros(2, int), 1)


def test_calibrate_and_its_errors():
  scores, baseline, scale = np.array([0.9, 0.5]), np.array([0.4, 0.6]), np.array([0.5, 0.25])
  np.testing.assert_allclose(calibration.calibrate(scores, baseline), [0.5, -0.1])
  np.testing.assert_allclose(calibration.calibrate(scores, baseline, scale), [1.0, -0.4])
  with pytest.raises(ValueError, match="baseline has shape"):
    calibration.calibrate(scores, baseline[:1])
  with pytest.raises(ValueError, match="scale must be positive"):
    calibration.calibrate(scores, baseline, np.array([1.0, 0.0]))


def _write_scores(path, identity, group, best, count):
  files.write_csv(str(path / calibration.SCORES_FILE), {
      "identity": identity, "group": group, "score_best": best, "score_count": count,
      "best_sample": [0] * len(identity)})


def test_variants_pair_people_by_identity_not_by_row(tmp_path):
  (tmp_path / "target").mkdir()
  (tmp_path / "reference").mkdir()
  _write_scores(tmp_path / "target", [5, 9, 2, 7], ["member", "member", "non_member",
                                                    "population"], [0.9, 0.7, 0.6, 0.5],
                [4, 2, 1, 0])
  _write_scores(tmp_path / "reference", [7, 2, 9, 5], ["non_member"] * 4, [0.3, 0.5, 0.4, 0.2],
                [1, 1, 0, 3])
  target = calibration.read_scores(str(tmp_path / "target"))
  reference = calibration.read_scores(str(tmp_path / "reference"))
  np.testing.assert_array_equal(target.is_member, [True, True, False, False])
  population = (np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.5, 0.25, 1.0]))
  found = calibration.variant_scores(target, reference=reference, population=population)
  assert set(found) == {"best", "count", "best-ref", "count-ref", "best-pop"}
  assert set(found) <= set(calibration.variant_names())
  np.testing.assert_allclose(found["best-ref"], [0.9 - 0.2, 0.7 - 0.4, 0.6 - 0.5, 0.5 - 0.3])
  np.testing.assert_allclose(found["count-ref"], [4 - 3, 2 - 0, 1 - 1, 0 - 1])
  np.testing.assert_allclose(found["best-pop"], [0.8 / 0.5, 0.5 / 0.5, 0.3 / 0.25, 0.1 / 1.0])
  reports = calibration.variant_reports(found, target.is_member, num_resamples=20, seed=0)
  assert reports["best-ref"]["auc"] == 1.0 and reports["count-ref"]["auc"] == 1.0
  _write_scores(tmp_path / "reference", [7, 2, 9, 4], ["non_member"] * 4, [0.3] * 4, [1] * 4)
  with pytest.raises(ValueError, match="different people"):
    calibration.variant_scores(target, reference=calibration.read_scores(
        str(tmp_path / "reference")))


def test_exposure_ranks_and_p_values_against_the_non_members():
  rng = np.random.default_rng(3)
  is_member = np.arange(30) < 12
  photos = np.where(is_member, np.where(np.arange(30) < 3, 35, 3), 0)
  scores = np.round(rng.normal(size=30) + 2.0 * (photos == 35), 1)  # Rounded: ties occur.
  table = exposure.exposure_table(np.arange(30), is_member, photos, scores)
  negatives = scores[~is_member]
  for i in range(30):
    population = negatives if is_member[i] else np.delete(scores, i)[~np.delete(is_member, i)]
    assert table["p_value"][i] == pytest.approx((1 + np.sum(population >= scores[i])) /
                                                (1 + len(population)))
    assert table["rank"][i] == 1 + np.sum(scores > scores[i])
  rows = exposure.group_summary(table, num_resamples=50, seed=0)
  assert [(r["photos_in_training"], r["people"]) for r in rows] == [(3, 9), (35, 3), (0, 18)]
  for row in rows[:2]:
    group = scores[is_member & (photos == row["photos_in_training"])]
    expected = np.mean((group[:, None] > negatives) + 0.5 * (group[:, None] == negatives))
    assert row["auc"] == pytest.approx(expected)
    assert row["exposed"] == int(np.sum(table["p_value"][photos == row["photos_in_training"]]
                                        <= exposure.EXPOSED_P))


def test_reference_people_are_encoder_identities_never_a_target():
  identity = np.repeat(np.arange(30), 6).astype(np.int64)
  arrays = FaceArrays(np.zeros((len(identity), 4, 4, 3), np.uint8), identity,
                      np.arange(len(identity), dtype=np.int64) + 100)
  split = make_split(arrays, seed=0, members=4, non_members=4, shadow=4, reference_photos=2)
  other = calibration_job.reference_split(arrays, split, people=5, reference_photos=2, seed=1)
  members = other.identities("members")
  assert len(members) == 5 and set(members.tolist()) <= set(split.identities("encoder").tolist())
  assert all(len(other.train[i]) == 4 and len(other.reference[i]) == 2 for i in members.tolist())
