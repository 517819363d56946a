"""Membership ROC metrics against closed forms and brute force; PSNR / SSIM against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia import metrics


def scores_with_ties(rng, num_positive, num_negative, shift=0.7):
  # Rounded to one decimal, so many scores tie within and across classes.
  members = np.round(rng.normal(shift, 1, num_positive), 1)
  non_members = np.round(rng.normal(0, 1, num_negative), 1)
  return np.r_[members, non_members], np.r_[np.ones(num_positive, int), np.zeros(num_negative, int)]


# Brute-force references.


def brute_auc_pairs(scores, labels):
  """Mann-Whitney: over all (member, non-member) pairs, wins count 1 and ties 1/2."""
  members, non_members = scores[labels == 1], scores[labels == 0]
  wins = (members[:, None] > non_members[None, :]).sum()
  ties = (members[:, None] == non_members[None, :]).sum()
  return (wins + ties / 2) / (len(members) * len(non_members))


def brute_roc(scores, labels):
  """ROC points for every threshold in (+inf, distinct scores descending), by direct counting."""
  thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
  tpr = np.array([np.mean(scores[labels == 1] >= t) for t in thresholds])
  fpr = np.array([np.mean(scores[labels == 0] >= t) for t in thresholds])
  return fpr, tpr, thresholds


def brute_trapezoid(scores, labels):
  fpr, tpr, _ = brute_roc(scores, labels)
  return sum((fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) / 2 for i in range(1, len(fpr)))


def brute_tpr_at_fpr(scores, labels, target):
  best = 0.0
  for t in np.r_[np.inf, np.unique(scores)]:
    if np.mean(scores[labels == 0] >= t) <= target:
      best = max(best, np.mean(scores[labels == 1] >= t))
  return best


# ------------------------------------------------------------------------------------------------


def test_perfect_separation():
  scores = np.r_[np.linspace(2, 3, 40), np.linspace(-1, 1, 60)]
  labels = np.r_[np.ones(40), np.zeros(60)]
  assert metrics.auc(scores, labels) == 1.0
  result = metrics.tpr_at_fpr(scores, labels, (1e-3, 1e-2, 0.5))
  np.testing.assert_array_equal(result.tpr, [1.0, 1.0, 1.0])
  np.testing.assert_array_equal(result.resolved, [False, False, True])  # 1/60 > 1e-2


def test_identical_score_sets_give_chance():
  values = np.random.default_rng(0).normal(size=50)
  scores, labels = np.r_[values, values], np.r_[np.ones(50), np.zeros(50)]
  assert metrics.auc(scores, labels) == pytest.approx(0.5, abs=1e-12)
  assert metrics.auc(np.zeros(10), np.r_[np.ones(4), np.zeros(6)]) == 0.5  # all tied
  fpr, tpr, _ = metrics.roc_curve(np.zeros(10), np.r_[np.ones(4), np.zeros(6)])
  np.testing.assert_array_equal(fpr, [0, 1]), np.testing.assert_array_equal(tpr, [0, 1])


def test_reversed_scores_give_zero():
  scores, labels = np.r_[np.arange(30.0), np.arange(30.0) + 100], np.r_[np.ones(30), np.zeros(30)]
  assert metrics.auc(scores, labels) == 0.0
  np.testing.assert_array_equal(metrics.tpr_at_fpr(scores, labels, (0.5,)).tpr, [0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scores_with_ties_against_brute_force(seed):
  rng = np.random.default_rng(seed)
  scores, labels = scores_with_ties(rng, 37 + seed, 61)
  order = rng.permutation(len(scores))
  scores, labels = scores[order], labels[order]
  assert metrics.auc(scores, labels) == pytest.approx(brute_auc_pairs(scores, labels), abs=1e-12)
  assert metrics.auc(scores, labels) == pytest.approx(brute_trapezoid(scores, labels), abs=1e-12)
  for actual, expected in zip(metrics.roc_curve(scores, labels), brute_roc(scores, labels)):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
  targets = (1 / 61, 0.05, 0.1, 0.3, 0.999)
  np.testing.assert_allclose(metrics.tpr_at_fpr(scores, labels, targets).tpr,
                             [brute_tpr_at_fpr(scores, labels, t) for t in targets], atol=1e-12)


def test_scores_are_not_rounded_to_float32():
  # Apart only beyond float32 precision: must not become a tie.
  scores = np.array([1.0 + 1e-12, 1.0, 0.0])
  assert metrics.auc(scores, np.array([1, 0, 0])) == 1.0


def test_members_are_the_positive_class():
  scores, labels = np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])
  assert metrics.auc(scores, labels) == 1.0
  assert metrics.auc(scores, 1 - labels) == 0.0


def test_bootstrap_contains_the_estimate_and_shrinks_with_more_data():
  widths = []
  for n in (40, 1000):
    scores, labels = scores_with_ties(np.random.default_rng(n), n, n)
    intervals = metrics.bootstrap_intervals(scores, labels, fpr_targets=(0.1, 0.3),
                                            num_resamples=400, seed=1)
    point = metrics.auc(scores, labels)
    assert intervals.auc[0] <= point <= intervals.auc[1]
    tpr = metrics.tpr_at_fpr(scores, labels, (0.1, 0.3)).tpr
    assert np.all((intervals.tpr_at_fpr[:, 0] <= tpr) & (tpr <= intervals.tpr_at_fpr[:, 1]))
    widths.append(np.r_[np.diff(intervals.auc), np.diff(intervals.tpr_at_fpr, axis=1)[:, 0]])
  assert np.all(widths[1] < widths[0] / 2)  # width ~ 1/sqrt(n): 25x the data, about 1/5 the width


def test_bootstrap_is_reproducible_and_matches_resampling_by_hand():
  scores, labels = scores_with_ties(np.random.default_rng(3), 20, 30)
  a = metrics.bootstrap_intervals(scores, labels, num_resamples=50, seed=7, confidence=0.8)
  b = metrics.bootstrap_intervals(scores, labels, num_resamples=50, seed=7, confidence=0.8)
  np.testing.assert_array_equal(a.auc, b.auc)
  # The same stratified resamples, drawn and scored one at a time.
  rng = np.random.default_rng(7)
  members, non_members = scores[labels == 1], scores[labels == 0]
  m_index = rng.integers(0, 20, (50, 20))
  n_index = rng.integers(0, 30, (50, 30))
  aucs = [brute_auc_pairs(np.r_[members[m_index[i]], non_members[n_index[i]]],
                          np.r_[np.ones(20), np.zeros(30)]) for i in range(50)]
  np.testing.assert_allclose(a.auc, np.quantile(aucs, [0.1, 0.9]), atol=1e-12)


def test_membership_report():
  scores, labels = scores_with_ties(np.random.default_rng(4), 30, 200)
  report = metrics.membership_report(scores, labels, num_resamples=100)
  assert report["num_positives"] == 30 and report["num_negatives"] == 200
  assert report["auc"] == pytest.approx(brute_auc_pairs(scores, labels))
  rows = {row["fpr"]: row for row in report["tpr_at_fpr"]}
  assert not rows[1e-3]["resolved"] and "not resolved" in rows[1e-3]["note"]
  assert rows[1e-2]["resolved"] and "note" not in rows[1e-2]
  assert rows[0.1]["tpr"] == pytest.approx(brute_tpr_at_fpr(scores, labels, 0.1))


@pytest.mark.parametrize("scores, labels, message", [
    ([0.1, np.nan, 0.3], [1, 0, 0], "NaN"),
    ([0.1, 0.2, 0.3], [1, 1, 1], "no non-members"),
    ([0.1, 0.2, 0.3], [0, 0, 0], "no members"),
    ([0.1, 0.2], [1, 0, 0], "differ in length"),
    ([0.1, 0.2, 0.3], [1, 2, 0], "labels must be"),
    ([[0.1, 0.2]], [[1, 0]], "1-D"),
])
def test_clear_errors(scores, labels, message):
  with pytest.raises(ValueError, match=message):
    metrics.auc(scores, labels)


def test_bad_targets_and_bootstrap_settings():
  scores, labels = [0.1, 0.2, 0.3], [1, 0, 0]
  with pytest.raises(ValueError, match="fpr_targets"):
    metrics.tpr_at_fpr(scores, labels, (0.0,))
  with pytest.raises(ValueError, match="confidence"):
    metrics.bootstrap_intervals(scores, labels, confidence=1.5)


# ------------------------------------------------------------------------------------------------
# Images.


def numpy_ssim(x, y, data_range, size=11, sigma=1.5):
  """Direct SSIM: explicit loops over valid window positions and channels, float64."""
  g = np.exp(-(np.arange(size) - (size - 1) / 2) ** 2 / (2 * sigma ** 2))
  w = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  values = []
  for c in range(x.shape[2]):
    for i in range(x.shape[0] - size + 1):
      for j in range(x.shape[1] - size + 1):
        a, b = x[i:i + size, j:j + size, c], y[i:i + size, j:j + size, c]
        mu_a, mu_b = (w * a).sum(), (w * b).sum()
        var_a, var_b = (w * (a - mu_a) ** 2).sum(), (w * (b - mu_b) ** 2).sum()
        cov = (w * (a - mu_a) * (b - mu_b)).sum()
        values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                      / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  return np.mean(values)


def test_psnr_closed_form():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 0.5, (2, 8, 8, 3)), jnp.float32)
  np.testing.assert_allclose(metrics.psnr(x + 0.1, x), 10 * np.log10(4 / 0.01) * np.ones(2),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(x * 0 + 100.0, x * 0 + 90.0, data_range=255.0),
                             10 * np.log10(255 ** 2 / 100) * np.ones(2), rtol=1e-5)
  assert np.isinf(metrics.psnr(x, x)).all()


def test_ssim_of_an_image_with_itself_is_one():
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  np.testing.assert_allclose(metrics.ssim(x, x), np.ones(3), atol=1e-5)


@pytest.mark.parametrize("data_range, scale", [(2.0, 1.0), (255.0, 127.5)])
def test_ssim_against_direct_numpy(data_range, scale):
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (2, 14, 17, 3))
  y = np.clip(0.6 * x + 0.3 * rng.normal(size=x.shape), -1, 1)  # correlated, not identical
  x, y = (x + (scale > 1)) * scale, (y + (scale > 1)) * scale  # [-1, 1] or [0, 255]
  actual = metrics.ssim(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                        data_range=data_range)
  expected = [numpy_ssim(x[i], y[i], data_range) for i in range(2)]
  np.testing.assert_allclose(actual, expected, atol=1e-4)
  assert 0.05 < expected[0] < 0.9


def test_image_metrics_jit_and_vmap():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(-1, 1, (4, 2, 12, 12, 1)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (4, 2, 12, 12, 1)), jnp.float32)
  direct = metrics.ssim(x, y)
  assert direct.shape == (4, 2)
  np.testing.assert_allclose(jax.jit(jax.vmap(metrics.ssim))(x, y), direct, atol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.vmap(metrics.psnr))(x, y), metrics.psnr(x, y), rtol=1e-6)


def test_image_metric_errors():
  x = jnp.zeros((2, 16, 16, 3))
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.psnr(x, x[:1])
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(x[:, :8, :8], x[:, :8, :8])
  with pytest.raises(ValueError, match="data_range"):
    metrics.psnr(x, x, data_range=0.0)
