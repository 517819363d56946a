"""Empirical lower bounds on epsilon from an attack's scores on canaries (here: identities).

A training run that is (epsilon, delta)-DP limits how well any attack can tell which canaries it
was trained on. Given the attack's scores on m canaries (higher: more likely included) and which
were included, each function returns an epsilon that the run's true one is at least, with
confidence 1 - beta: were the run (eps, delta)-DP for a smaller eps, what the attack achieved
would have had probability below beta. A lower bound above the accountant's epsilon means the
training does not do what its accounting says.

`one_run_epsilon`: Steinke, Nasr and Jagielski, "Privacy auditing with one (1) training run"
(NeurIPS 2023). Each canary is included independently with probability 1/2 and the model is
trained once. The auditor guesses "included" for the k+ highest scores and "excluded" for the k-
lowest, abstaining on the rest. Under (eps, delta)-DP the number W of correct guesses among the
r = k+ + k- satisfies (their Theorem 5.2)

    P[W >= v] <= f(v) + 2 m delta max_{i = 1..v} (f(v - i) - f(v)) / i,
    f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v],

so the largest eps at which the right side is below beta, for the observed v, is the bound.

`threshold_epsilon`: the classic bound (Jagielski, Ullman and Oprea 2020; Nasr et al. 2021).
Guessing "included" at scores >= t, an (eps, delta)-DP run has TPR <= e^eps FPR + delta and
TNR <= e^eps FNR + delta. With one-sided Clopper-Pearson upper bounds FPR_hi and FNR_hi, each at
level beta / 2, eps >= log((TPR_lo - delta) / FPR_hi) with TPR_lo = 1 - FNR_hi, and in the other
direction eps >= log((TNR_lo - delta) / FNR_hi) with TNR_lo = 1 - FPR_hi.

Choosing the guesses or the threshold after seeing the scores spends confidence: the functions
take a list of candidates and divide beta among them (Bonferroni), reporting the best.
Ties in scores are broken by canary order, which must not depend on who was included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

from gmia import metrics


def clopper_pearson_upper(successes, trials: int, significance: float) -> np.ndarray:
  """The one-sided Clopper-Pearson upper bound p_hi on a binomial rate: P[Binomial(trials,
  p_hi) <= successes] = significance (1 when successes = trials)."""
  successes = np.asarray(successes)
  safe = np.minimum(successes, trials - 1)
  bound = scipy.special.betaincinv(safe + 1, trials - safe, 1 - significance)
  return np.where(successes >= trials, 1.0, bound)


def clopper_pearson_lower(successes, trials: int, significance: float) -> np.ndarray:
  """The one-sided Clopper-Pearson lower bound p_lo: P[Binomial(trials, p_lo) >= successes] =
  significance (0 when successes = 0)."""
  successes = np.asarray(successes)
  return 1.0 - clopper_pearson_upper(trials - successes, trials, significance)


def clopper_pearson(successes, trials: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
  """The two-sided (equal-tailed) Clopper-Pearson interval (lo, hi) at `confidence`."""
  _check_confidence(confidence)
  significance = (1 - confidence) / 2
  return (clopper_pearson_lower(successes, trials, significance),
          clopper_pearson_upper(successes, trials, significance))


def one_run_p_value(canaries: int, guesses: int, correct: int, epsilon: float,
                    delta: float) -> float:
  """Steinke, Nasr and Jagielski's bound on P[W >= correct] for an (epsilon, delta)-DP run with
  `canaries` canaries and `guesses` guesses (see the module docstring)."""
  q = scipy.special.expit(epsilon)
  tail = scipy.stats.binom.sf(correct - 1, guesses, q)
  if correct < 1 or delta == 0:
    return float(min(tail, 1.0))
  below = np.arange(1, correct + 1)
  windows = np.cumsum(scipy.stats.binom.pmf(correct - below, guesses, q))  # P[v-i <= W < v]
  return float(min(tail + 2 * canaries * delta * np.max(windows / below), 1.0))


def _one_run_bound(canaries: int, guesses: int, correct: int, delta: float,
                   significance: float) -> float:
  """The largest epsilon whose p-value is below `significance` (0 when even 0 is not)."""
  gap = lambda eps: one_run_p_value(canaries, guesses, correct, eps, delta) - significance
  if gap(0.0) >= 0:
    return 0.0
  high = 1.0
  while gap(high) < 0:  # Ends: at large eps every guess is likely correct, the p-value 1.
    high *= 2
  return float(scipy.optimize.brentq(gap, high / 2 if high > 1 else 0.0, high, xtol=1e-10))


class OneRunAudit(NamedTuple):
  """epsilon: the lower bound; k_pos, k_neg: the guesses that gave it; correct: how many of
  the k_pos + k_neg guesses were right."""
  epsilon: float
  k_pos: int
  k_neg: int
  correct: int


def one_run_epsilon(scores, included, *, delta: float, confidence: float = 0.95,
                    guesses: Sequence[tuple[int, int]] = ((100, 100),)) -> OneRunAudit:
  """Lower bound on epsilon from one training run (Steinke, Nasr and Jagielski 2023).

  scores: f[m], higher for canaries the attack thinks were included; included: bool[m], each
  drawn independently with probability 1/2 before training. guesses: candidate (k+, k-) pairs,
  each clipped to the m canaries; 1 - confidence is divided among them.
  """
  scores, included = _check_canaries(scores, included)
  _check_confidence(confidence)
  _check_delta(delta)
  m = len(scores)
  if not guesses or any(k_pos < 0 or k_neg < 0 or k_pos + k_neg < 1 for k_pos, k_neg in guesses):
    raise ValueError(f"guesses must be a non-empty list of (k+, k-) with k+, k- >= 0 and "
                     f"k+ + k- >= 1, got {guesses!r}")
  significance = (1 - confidence) / len(guesses)
  ranked = included[np.argsort(-scores, kind="stable")]
  best = OneRunAudit(0.0, 0, 0, 0)
  for k_pos, k_neg in guesses:
    k_pos = min(k_pos, m)
    k_neg = min(k_neg, m - k_pos)
    correct = int(ranked[:k_pos].sum() + (~ranked[m - k_neg:]).sum())
    bound = _one_run_bound(m, k_pos + k_neg, correct, delta, significance)
    if bound > best.epsilon:
      best = OneRunAudit(bound, k_pos, k_neg, correct)
  return best


class ThresholdAudit(NamedTuple):
  """epsilon: the lower bound; threshold: the score at and above which canaries were guessed
  included; tpr, fpr: the rates observed there."""
  epsilon: float
  threshold: float
  tpr: float
  fpr: float


def threshold_epsilon(scores, included, *, delta: float, confidence: float = 0.95,
                      threshold: float | None = None) -> ThresholdAudit:
  """Lower bound on epsilon from the attack's TPR and FPR at a threshold (both directions, with
  Clopper-Pearson bounds; see the module docstring).

  threshold: the one threshold, fixed before seeing the scores; None: every distinct score,
  1 - confidence divided among them.
  """
  scores, included = _check_canaries(scores, included)
  _check_confidence(confidence)
  _check_delta(delta)
  fpr, tpr, thresholds = metrics.roc_curve(scores, included)
  positives = int(included.sum())
  negatives = len(included) - positives
  if threshold is not None:
    guessed = scores >= threshold
    fpr = np.array([np.sum(guessed & ~included) / negatives])
    tpr = np.array([np.sum(guessed & included) / positives])
    thresholds = np.array([threshold])
  significance = (1 - confidence) / len(thresholds) / 2
  fpr_hi = clopper_pearson_upper(np.rint(fpr * negatives), negatives, significance)
  fnr_hi = clopper_pearson_upper(np.rint((1 - tpr) * positives), positives, significance)
  with np.errstate(divide="ignore"):
    bounds = np.maximum(np.log(np.maximum(1 - fnr_hi - delta, 0)) - np.log(fpr_hi),
                        np.log(np.maximum(1 - fpr_hi - delta, 0)) - np.log(fnr_hi))
  best = int(np.argmax(bounds))
  return ThresholdAudit(max(float(bounds[best]), 0.0), float(thresholds[best]),
                        float(tpr[best]), float(fpr[best]))


def _check_canaries(scores, included) -> tuple[np.ndarray, np.ndarray]:
  scores, included = np.asarray(scores), np.asarray(included)
  if scores.ndim != 1 or scores.shape != included.shape or not len(scores):
    raise ValueError(f"scores and included must be non-empty 1-D arrays of one length, got "
                     f"shapes {scores.shape} and {included.shape}")
  if not np.all(np.isfinite(scores)):
    raise ValueError("canary scores must be finite numbers")
  if not np.all((included == 0) | (included == 1)):
    raise ValueError("included must be booleans (1: the canary was trained on)")
  return scores.astype(np.float64), included.astype(bool)


def _check_confidence(confidence: float) -> None:
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _check_delta(delta: float) -> None:
  if not 0 <= delta < 1 or math.isnan(delta):
    raise ValueError(f"delta must be in [0, 1), got {delta}")
