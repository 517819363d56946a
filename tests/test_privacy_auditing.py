"""Epsilon lower bounds from canary scores: Clopper-Pearson against scipy.stats, the one-run bound
against a transcription of Steinke, Nasr and Jagielski's algorithm, both audits against
jax-privacy's, and what they say of a planted leak and of random scores.

tests/fixtures/privacy_auditing_jax_privacy.json holds seeded scores and what jax-privacy 2.0.0
(auditing.CanaryScoreAuditor: epsilon_one_run and epsilon_clopper_pearson(one_sided=False), each
with an Explicit threshold, significance 0.05) computed from them, in a separate environment.
"""

import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from gmia.privacy import auditing

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "privacy_auditing_jax_privacy.json")


def paper_p_value(m, r, v, eps, delta):
  """Steinke, Nasr and Jagielski (2023), the p-value of their audit, as their paper writes it."""
  q = 1 / (1 + math.exp(-eps))
  beta = scipy.stats.binom.sf(v - 1, r, q)
  alpha, total = 0, 0
  for i in range(1, v + 1):
    total = total + scipy.stats.binom.pmf(v - i, r, q)
    if total > i * alpha:
      alpha = total / i
  return min(beta + alpha * delta * 2 * m, 1)


def paper_epsilon(m, r, v, delta, p):
  """Their bisection for the largest epsilon whose p-value is below p."""
  eps_min, eps_max = 0, 1
  while paper_p_value(m, r, v, eps_max, delta) < p:
    eps_max = eps_max + 1
  for _ in range(40):
    eps = (eps_min + eps_max) / 2
    if paper_p_value(m, r, v, eps, delta) < p:
      eps_min = eps
    else:
      eps_max = eps
  return eps_min


@pytest.mark.parametrize("trials", [1, 7, 50, 1000])
def test_clopper_pearson_bounds_match_scipy_beta_and_their_definition(trials):
  successes = np.unique(np.linspace(0, trials, 6).round().astype(int))
  for significance in (0.025, 0.1):
    upper = auditing.clopper_pearson_upper(successes, trials, significance)
    lower = auditing.clopper_pearson_lower(successes, trials, significance)
    below = successes < trials
    np.testing.assert_allclose(
        upper[below], scipy.stats.beta.ppf(1 - significance, successes[below] + 1,
                                           trials - successes[below]), rtol=1e-10)
    above = successes > 0
    np.testing.assert_allclose(
        lower[above], scipy.stats.beta.ppf(significance, successes[above],
                                           trials - successes[above] + 1), rtol=1e-10)
    np.testing.assert_array_equal(upper[~below], 1.0)
    np.testing.assert_array_equal(lower[~above], 0.0)
    # The defining tails: observing <= k (>= k) successes has probability `significance` at the
    # upper (lower) bound.
    np.testing.assert_allclose(scipy.stats.binom.cdf(successes[below], trials, upper[below]),
                               significance, rtol=1e-8)
    np.testing.assert_allclose(scipy.stats.binom.sf(successes[above] - 1, trials, lower[above]),
                               significance, rtol=1e-8)
  lo, hi = auditing.clopper_pearson(successes, trials, 0.95)
  np.testing.assert_allclose(hi, auditing.clopper_pearson_upper(successes, trials, 0.025))
  assert np.all(lo <= successes / trials) and np.all(successes / trials <= hi)


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 70, 1e-5), (1000, 100, 95, 0.0),
                                         (200, 60, 60, 1e-4), (10_000, 1000, 560, 1e-6),
                                         (500, 40, 25, 1e-3)])
def test_one_run_bound_matches_the_papers_algorithm(m, r, v, delta):
  for eps in (0.0, 0.5, 2.0, 6.0):
    np.testing.assert_allclose(auditing.one_run_p_value(m, r, v, eps, delta),
                               paper_p_value(m, r, v, eps, delta), rtol=1e-9, atol=1e-15)
  want = paper_epsilon(m, r, v, delta, 0.05)
  got = auditing._one_run_bound(m, r, v, delta, 0.05)
  np.testing.assert_allclose(got, want, atol=1e-8)


def test_audits_match_jax_privacy():
  with open(FIXTURE) as f:
    cases = json.load(f)["cases"]
  checked = 0
  for case in cases:
    scores, included = np.asarray(case["scores"]), np.asarray(case["included"], bool)
    confidence = 1 - case["significance"]
    for audit in case["audits"]:
      threshold = audit["threshold"]
      got = auditing.threshold_epsilon(scores, included, delta=case["delta"],
                                       confidence=confidence, threshold=threshold)
      np.testing.assert_allclose(got.epsilon, audit["epsilon_clopper_pearson"], atol=1e-9)
      if audit["epsilon_one_run"] is not None:
        # jax-privacy guesses "included" at and above the threshold and abstains below it.
        guessed = int(np.sum(scores >= threshold))
        got = auditing.one_run_epsilon(scores, included, delta=case["delta"],
                                       confidence=confidence, guesses=[(guessed, 0)])
        np.testing.assert_allclose(got.epsilon, audit["epsilon_one_run"], atol=1e-5)
      checked += 1
  assert checked == 15


def _canaries(m, seed=0):
  return np.random.default_rng(seed).random(m) < 0.5


GUESSES = [(50, 50), (100, 100), (250, 250), (200, 0)]


def test_a_planted_leak_gives_a_large_bound_and_random_scores_none():
  included = _canaries(1000)
  noise = np.random.default_rng(1).random(1000)
  leak = included + 0.01 * noise  # Perfectly separates the included canaries.
  one_run = auditing.one_run_epsilon(leak, included, delta=1e-5, guesses=GUESSES)
  assert one_run.epsilon > 4 and one_run.correct == one_run.k_pos + one_run.k_neg == 500
  threshold = auditing.threshold_epsilon(leak, included, delta=1e-5)
  assert threshold.epsilon > 3.5 and threshold.tpr == 1 and threshold.fpr == 0
  for seed in range(5):
    scores = np.random.default_rng(10 + seed).standard_normal(1000)
    assert auditing.one_run_epsilon(scores, included, delta=1e-5, guesses=GUESSES).epsilon < 0.3
    assert auditing.threshold_epsilon(scores, included, delta=1e-5).epsilon < 0.3
  # A leak of who was left out (half the excluded canaries score far below everyone else) is
  # found by the TNR / FNR direction: at the gap, TPR = 1 but FPR = 1/2 (log 2 in the other).
  scores = np.random.default_rng(2).standard_normal(1000)
  scores[~included & (noise < 0.5)] = -10
  found = auditing.threshold_epsilon(scores, included, delta=1e-5)
  assert found.epsilon > 2.5 and found.tpr == 1 and 0.4 < found.fpr < 0.6


def test_searching_guesses_spends_confidence():
  """The same guesses among more candidates give a smaller bound (beta is divided)."""
  included = _canaries(400, seed=3)
  scores = included * 1.5 + np.random.default_rng(4).standard_normal(400)
  one = auditing.one_run_epsilon(scores, included, delta=1e-5, guesses=[(60, 60)])
  many = auditing.one_run_epsilon(scores, included, delta=1e-5,
                                  guesses=[(60, 60)] + [(k, 0) for k in range(1, 20)])
  assert (many.k_pos, many.k_neg) == (60, 60)
  assert 0 < many.epsilon < one.epsilon
  np.testing.assert_allclose(
      one.epsilon, paper_epsilon(400, 120, one.correct, 1e-5, 0.05), atol=1e-8)


def test_bad_inputs_are_clear_errors():
  included = _canaries(10)
  with pytest.raises(ValueError, match="one length"):
    auditing.one_run_epsilon(np.zeros(9), included, delta=1e-5)
  with pytest.raises(ValueError, match="finite"):
    auditing.threshold_epsilon(np.full(10, np.nan), included, delta=1e-5)
  with pytest.raises(ValueError, match="delta"):
    auditing.one_run_epsilon(np.zeros(10), included, delta=1.5)
  with pytest.raises(ValueError, match="confidence"):
    auditing.threshold_epsilon(np.zeros(10), included, delta=0, confidence=1.0)
  with pytest.raises(ValueError, match="guesses"):
    auditing.one_run_epsilon(np.zeros(10), included, delta=0, guesses=[(0, 0)])
