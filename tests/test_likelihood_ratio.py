"""The per-person likelihood ratio against scipy.stats.norm fitted person by person."""

import numpy as np
import pytest
from scipy import stats

from gmia import metrics
from gmia.attacks import likelihood_ratio as lira


def _shadows(rng, num_shadows, num_people, effect=0.0):
  """Scores f64[K, P] that rise by `effect` where the shadow saw the person, and the IN mask."""
  shadow_in = rng.random((num_shadows, num_people)) < 0.5
  hub = rng.normal(0.3, 0.1, num_people)  # people who resemble many faces score high anyway
  scores = hub + rng.normal(0, 0.05, (num_shadows, num_people)) + effect * shadow_in
  return scores, shadow_in


def test_per_person_fit_matches_scipy_norm_person_by_person():
  rng = np.random.default_rng(0)
  scores, shadow_in = _shadows(rng, 40, 6, effect=0.1)
  target = rng.normal(0.35, 0.1, 6)
  fit = lira.fit_gaussians(scores, shadow_in, pooled_variance=False)
  online, offline = lira.online_scores(fit, target), lira.offline_scores(fit, target)
  for p in range(6):
    scores_in, scores_out = scores[shadow_in[:, p], p], scores[~shadow_in[:, p], p]
    fit_in = stats.norm(scores_in.mean(), scores_in.std(ddof=1))
    fit_out = stats.norm(scores_out.mean(), scores_out.std(ddof=1))
    assert online[p] == pytest.approx(fit_in.logpdf(target[p]) - fit_out.logpdf(target[p]),
                                      rel=1e-10)
    # The offline score ranks as LiRA's one-sided p-value: -log sf is increasing in it.
    assert -fit_out.logsf(target[p]) == pytest.approx(-stats.norm.logsf(offline[p]), rel=1e-10)
  assert not fit.pooled and not fit.imputed_in.any() and not fit.imputed_out.any()


def test_pooled_variance_is_the_within_person_variance_over_its_degrees_of_freedom():
  rng = np.random.default_rng(1)
  scores, shadow_in = _shadows(rng, 8, 5, effect=0.2)
  target = rng.normal(0.4, 0.1, 5)
  fit = lira.fit_gaussians(scores, shadow_in)  # 8 shadows < 16: pooled by default
  assert fit.pooled
  residuals = {True: [], False: []}
  for p in range(5):
    for side in (True, False):
      own = scores[shadow_in[:, p] == side, p]
      residuals[side].append(own - own.mean())
  dof = {side: sum(len(r) for r in residuals[side]) - 5 for side in (True, False)}
  std = {side: np.sqrt(sum(np.sum(r ** 2) for r in residuals[side]) / dof[side])
         for side in (True, False)}
  expected = [stats.norm(scores[shadow_in[:, p], p].mean(), std[True]).logpdf(target[p])
              - stats.norm(scores[~shadow_in[:, p], p].mean(), std[False]).logpdf(target[p])
              for p in range(5)]
  np.testing.assert_allclose(lira.online_scores(fit, target), expected, rtol=1e-10)


def test_arctanh_transform_fits_in_the_transformed_units():
  rng = np.random.default_rng(2)
  scores, shadow_in = _shadows(rng, 32, 4, effect=0.1)
  fit = lira.fit_gaussians(scores, shadow_in, transform="arctanh", pooled_variance=False)
  plain = lira.fit_gaussians(np.arctanh(scores), shadow_in, pooled_variance=False)
  target = np.array([0.2, 0.5, 0.3, -0.4])
  np.testing.assert_allclose(lira.online_scores(fit, target),
                             lira.online_scores(plain, np.arctanh(target)), rtol=1e-12)
  # A sample that copies a photo (cosine 1, or a float32 cosine a little past it) stays finite.
  assert np.all(np.isfinite(lira.online_scores(fit, np.array([1.0, 1.0004, -1.0, 0.0]))))
  with pytest.raises(ValueError, match=r"needs scores in \[-1, 1\]"):
    lira.fit_gaussians(scores + 2, shadow_in, transform="arctanh")
  with pytest.raises(ValueError, match="unknown score transform"):
    lira.fit_gaussians(scores, shadow_in, transform="probit")


def test_planted_member_ranks_first_online_and_offline():
  rng = np.random.default_rng(3)
  scores, shadow_in = _shadows(rng, 16, 30, effect=0.3)
  # The target's scores: everybody at their OUT level, person 17 deep in their IN distribution.
  fit = lira.fit_gaussians(scores, shadow_in)
  target = fit.mean_out + rng.normal(0, 0.05, 30)
  target[17] = fit.mean_in[17]
  is_member = np.arange(30) == 17
  for score in (lira.online_scores(fit, target), lira.offline_scores(fit, target)):
    assert int(np.argmax(score)) == 17
    assert metrics.auc(score, is_member) == 1.0
  # The raw score would not find them: hubs score higher without being seen.
  assert int(np.argmax(target)) != 17


def test_missing_sides_and_constant_scores_stay_finite():
  rng = np.random.default_rng(4)
  scores, shadow_in = _shadows(rng, 6, 5, effect=0.2)
  shadow_in[:, 0] = False  # no shadow saw person 0
  shadow_in[:, 1] = True   # every shadow saw person 1
  scores[:, 2] = 0.0       # a count that never moves
  fit = lira.fit_gaussians(scores, shadow_in)
  assert fit.imputed_in.tolist() == [True, False, False, False, False]
  assert fit.imputed_out.tolist() == [False, True, False, False, False]
  seen_both = slice(2, 5)
  shift = np.mean(fit.mean_in[seen_both] - fit.mean_out[seen_both])
  assert fit.mean_in[0] == pytest.approx(fit.mean_out[0] + shift)
  assert fit.mean_out[1] == pytest.approx(fit.mean_in[1] - shift)
  target = np.array([0.5, 0.1, 0.0, 3.0, -2.0])
  for score in (lira.online_scores(fit, target), lira.offline_scores(fit, target)):
    assert np.all(np.isfinite(score))
  # Per-person variances: person 2's zero variance is floored, not divided by.
  fit = lira.fit_gaussians(scores, shadow_in, pooled_variance=False)
  assert np.all(np.isfinite(lira.online_scores(fit, target)))
  assert fit.std_in[2] > 0


def test_offline_only_shadows():
  rng = np.random.default_rng(5)
  scores = rng.normal(0.3, 0.05, (4, 7))
  fit = lira.fit_gaussians(scores, np.zeros((4, 7), bool))
  assert fit.mean_in is None
  target = scores.mean(0) + 0.1
  assert np.all(lira.offline_scores(fit, target) > 0)
  with pytest.raises(ValueError, match="use offline_scores"):
    lira.online_scores(fit, target)


def test_bad_inputs_are_refused():
  scores, shadow_in = np.zeros((3, 4)), np.zeros((3, 4), bool)
  with pytest.raises(ValueError, match="shadow_in must be bool"):
    lira.fit_gaussians(scores, shadow_in[:2])
  with pytest.raises(ValueError, match="non-empty"):
    lira.fit_gaussians(np.zeros((0, 4)), np.zeros((0, 4), bool))
  with pytest.raises(ValueError, match="non-finite"):
    lira.fit_gaussians(np.full((3, 4), np.nan), shadow_in)
  with pytest.raises(ValueError, match="did not"):
    lira.fit_gaussians(scores, ~shadow_in)
  with pytest.raises(ValueError, match="cannot estimate a variance"):
    lira.fit_gaussians(np.zeros((1, 2)), np.array([[True, False]]))
  fit = lira.fit_gaussians(np.random.default_rng(0).random((3, 4)), shadow_in)
  with pytest.raises(ValueError, match=r"shape \(4,\)"):
    lira.offline_scores(fit, np.zeros(3))
  with pytest.raises(ValueError, match="non-finite"):
    lira.offline_scores(fit, np.array([0, 0, np.nan, 0]))
