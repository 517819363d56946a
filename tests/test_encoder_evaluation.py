"""Encoder evaluation: verification and 1-NN identification against numpy brute force."""

import numpy as np
import pytest

from gmia.face_encoder import evaluation


def unit_embeddings(rng, n, dim=8):
  x = rng.normal(size=(n, dim)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force_verification(embeddings, identity):
  """Every pair of the full N x N similarity matrix; AUC over all (genuine, impostor) pairs; TAR
  as the best over all thresholds whose FAR stays within the target."""
  similarity = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
  upper = np.triu_indices(len(embeddings), k=1)
  same = (identity[:, None] == identity[None, :])[upper]
  genuine, impostor = similarity[upper][same], similarity[upper][~same]
  differences = genuine[:, None] - impostor[None, :]
  expected = {"verification_auc": np.mean(differences > 0) + 0.5 * np.mean(differences == 0),
              "genuine_pairs": len(genuine), "impostor_pairs": len(impostor)}
  for far in evaluation.FARS:
    best = max(np.mean(genuine > t) for t in np.r_[impostor, np.inf]
               if np.mean(impostor > t) <= far)
    expected[f"tar_at_far_{far:g}"] = best if far * len(impostor) >= 1 else np.nan
  return expected


def assert_metrics_equal(got, expected):
  assert set(got) == set(expected)
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, nan_ok=True), key


@pytest.mark.parametrize("n", [40, 70], ids=["far_1e-3_unresolved", "both_resolved"])
def test_verification_matches_brute_force(n, monkeypatch):
  rng = np.random.default_rng(n)
  identity = rng.integers(0, 9, n)
  # Same-identity photos lean towards a shared centre, so the TARs are neither 0 nor 1.
  centres = unit_embeddings(rng, 9)
  embeddings = unit_embeddings(rng, n) + 0.7 * centres[identity]
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  expected = brute_force_verification(embeddings, identity)
  assert 0.5 < expected["verification_auc"] < 1 and 0 < expected["tar_at_far_0.01"] < 1
  assert np.isnan(expected["tar_at_far_0.001"]) == (n == 40)
  assert_metrics_equal(evaluation.verification(embeddings, identity), expected)
  # Blocks of a few rows / pairs at a time give the same scores.
  monkeypatch.setattr(evaluation, "_BLOCK_ELEMENTS", 3 * n)
  assert_metrics_equal(evaluation.verification(embeddings, identity), expected)


def test_genuine_pairs_are_all_same_identity_pairs():
  identity = np.array([3, 1, 3, 3, 7, 1, 9])
  first, second = evaluation.genuine_pairs(identity)
  got = sorted(tuple(sorted(pair)) for pair in zip(first.tolist(), second.tolist()))
  expected = [(i, j) for i in range(7) for j in range(i + 1, 7) if identity[i] == identity[j]]
  assert got == expected


def test_impostor_sample_is_uniform_over_impostor_pairs():
  identity = np.array([0, 0, 0, 1, 1, 2])
  first, second = evaluation.sample_impostor_pairs(identity, 110_000, seed=3)
  assert np.all(identity[first] != identity[second])
  pairs = np.minimum(first, second) * 6 + np.maximum(first, second)
  counts = np.bincount(pairs, minlength=36)
  impostor = [i * 6 + j for i in range(6) for j in range(i + 1, 6) if identity[i] != identity[j]]
  assert np.count_nonzero(counts) == len(impostor) == 11
  # 10,000 expected per pair, standard deviation about 95.
  np.testing.assert_allclose(counts[impostor], 10_000, rtol=0.05)
  again = evaluation.sample_impostor_pairs(identity, 110_000, seed=3)
  assert np.array_equal(again[0], first) and np.array_equal(again[1], second)


def test_verification_samples_impostors_beyond_the_cap():
  rng = np.random.default_rng(1)
  identity = np.repeat(np.arange(30), 10)
  centres = unit_embeddings(rng, 30)
  embeddings = unit_embeddings(rng, 300) + 0.5 * centres[identity]
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  exact = evaluation.verification(embeddings, identity)
  sampled = evaluation.verification(embeddings, identity, max_impostor_pairs=20_000, seed=0)
  assert exact["impostor_pairs"] == 300 * 299 / 2 - 30 * 45 and sampled["impostor_pairs"] == 20_000
  assert sampled["genuine_pairs"] == exact["genuine_pairs"] == 30 * 45
  assert sampled["verification_auc"] == pytest.approx(exact["verification_auc"], abs=0.01)
  assert sampled["tar_at_far_0.01"] == pytest.approx(exact["tar_at_far_0.01"], abs=0.05)
  with pytest.raises(ValueError, match="max_impostor_pairs"):
    evaluation.verification(embeddings, identity, max_impostor_pairs=0)


def test_nearest_neighbour_matches_brute_force_with_duplicates():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(30, 5))
  features[[3, 17]] = features[10]  # Three identical photos, labelled apart below.
  labels = rng.integers(0, 4, 30)
  labels[[3, 10, 17]] = [0, 1, 2]
  dist = ((features[:, None] - features[None]) ** 2).sum(-1) + np.diag(np.full(30, np.inf))
  nearest = dist.argmin(1)  # Ties go to the smallest index.
  assert nearest[3] == 10 and nearest[10] == 3 and nearest[17] == 3
  expected = np.mean(labels[nearest] == labels)
  assert evaluation.nearest_neighbour_accuracy(features, labels) == pytest.approx(expected)


def test_bad_inputs_are_named():
  rng = np.random.default_rng(0)
  embeddings = unit_embeddings(rng, 6)
  with pytest.raises(ValueError, match="two identities"):
    evaluation.verification(embeddings, np.zeros(6, int))
  embeddings[2, 1] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    evaluation.nearest_neighbour_accuracy(embeddings, np.arange(6) % 2)
