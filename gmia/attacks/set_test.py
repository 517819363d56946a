"""A person-level test over a person's k photos (the set statistic of CDI, Dubinski et al., CVPR
2025): do this person's per-photo scores sit above the population's per-photo scores?

Any per-photo score works (a photo's best similarity to the samples, its density ratio, ...).
Two tests, both one-sided (alternative: the person's photos score higher):

  Welch's t-test   t = (mean_k - mean_pop) / sqrt(s_k^2 / k + s_pop^2 / n) against Student's t
                   with the Welch-Satterthwaite degrees of freedom; needs k >= 2. Its p-value is
                   an approximation that is poor for small k and skewed scores.
  permutation      the mean of the person's k scores against the means of k scores drawn without
                   replacement from the pooled k + n: every arrangement when there are at most
                   `max_exact` of them (the exact p-value), else `num_resamples` random ones,
                   p = (1 + #{as high}) / (1 + resamples), which is still a valid p-value:
                   P(p <= alpha) <= alpha under the null, for any number of resamples.

What the p-value means: under the null hypothesis that the person's photo scores are independent
draws from the population's photo score distribution (for the permutation test: that the k + n
scores are exchangeable), the probability of a statistic at least as high as the one observed. A
small p-value says the person's photos score higher than the population's photos do; it is
evidence of membership only in so far as nothing else lifts them. In particular photos of one
person are not independent draws: a person who resembles the generator's faces in general has all
k photos high, and both tests then count k correlated photos as k pieces of evidence. The
population's own p-values (`person_t_tests` leaves each population person out of their own
reference) show how far that goes: under the null they are uniform, so the fraction below 0.05
should be about 0.05. A per-person score against per-person population scores
(`identity_membership.leave_one_out_p_values`) respects the clustering at the cost of power.

Float64 numpy throughout; Student's t tail comes from the regularised incomplete beta function by
its continued fraction (Numerical Recipes 6.4, modified Lentz), so no scipy is needed. Against
scipy.stats.t.sf its relative error is below 1e-12 up to 100 degrees of freedom and 1e-10 up to
10^4 (the difference of two log-gammas of df / 2 loses digits as df grows: 1e-8 at 10^6).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

# Exact permutation p-values enumerate up to this many arrangements (C(k + n, k)).
DEFAULT_MAX_EXACT = 200_000
DEFAULT_NUM_RESAMPLES = 10_000
# Random arrangements are drawn in batches of about this many pooled scores.
_BATCH_SCORES = 1 << 22
# Continued-fraction convergence: a relative step below this (times sqrt(a + b)), in at most this
# many steps (it needs O(sqrt(max(a, b))): about 50 up to 10^7 degrees of freedom).
_CF_TOLERANCE = 4 * np.finfo(np.float64).eps
_CF_MAX_STEPS = 10_000
_TINY = 1e-300
# Sums within this many ulps (of k x the largest score) of the observed sum count as ties (as
# high): sums of the same numbers in another order differ by rounding.
_TIE_TOLERANCE = 100 * np.finfo(np.float64).eps

_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


def _beta_continued_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
  """The continued fraction of I_x(a, b), vectorised; converges fast for x < (a+1)/(a+b+2).

  Each element stops at its own convergence, when a step moves it by less than the rounding of
  its terms: about eps x sqrt(a + b) (with a = 10^6 the steps settle at 2e-14, not at eps).
  """
  def guard(v):
    return np.where(np.abs(v) < _TINY, _TINY, v)
  tolerance = _CF_TOLERANCE * np.maximum(1.0, np.sqrt(a + b))
  c = np.ones_like(x)
  d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
  h = d.copy()
  done = np.zeros(x.shape, bool)
  for m in range(1, _CF_MAX_STEPS + 1):
    numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
    d, c = 1.0 / guard(1.0 + numerator * d), guard(1.0 + numerator / c)
    step = d * c
    numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
    d, c = 1.0 / guard(1.0 + numerator * d), guard(1.0 + numerator / c)
    h = np.where(done, h, h * step * d * c)
    done |= np.abs(d * c - 1.0) < tolerance
    if done.all():
      return h
  raise ArithmeticError(f"the incomplete beta fraction did not converge in {_CF_MAX_STEPS} steps")


def _incomplete_beta(a: np.ndarray, b: np.ndarray, x: np.ndarray, x_complement: np.ndarray
                     ) -> np.ndarray:
  """Regularised I_x(a, b) for x in [0, 1], given x and 1 - x (each computed without the
  cancellation of subtracting the other from 1)."""
  swap = x > (a + 1.0) / (a + b + 2.0)
  a_, b_ = np.where(swap, b, a), np.where(swap, a, b)
  x_, y_ = np.where(swap, x_complement, x), np.where(swap, x, x_complement)
  with np.errstate(divide="ignore"):
    log_front = (a_ * np.log(x_) + b_ * np.log(y_) + _lgamma(a_ + b_) - _lgamma(a_)
                 - _lgamma(b_))
  value = np.exp(log_front) * _beta_continued_fraction(a_, b_, x_) / a_
  value = np.where(x_ == 0, 0.0, value)
  return np.where(swap, 1.0 - value, value)


def student_t_sf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
  """f64[...]: P(T >= t) for Student's T with `df` > 0 degrees of freedom (any real df)."""
  t, df = np.broadcast_arrays(np.asarray(t, np.float64), np.asarray(df, np.float64))
  if not np.all(df > 0):
    raise ValueError(f"degrees of freedom must be > 0, got {df.min():g}")
  square = np.square(t)
  finite = np.isfinite(square)
  # P(|T| >= |t|) = I_{df / (df + t^2)}(df / 2, 1/2).
  x = np.where(finite, df / (df + np.where(finite, square, 0.0)), 0.0)
  x_complement = np.where(finite, square / (df + np.where(finite, square, 0.0)), 1.0)
  two_sided = _incomplete_beta(df / 2, np.full_like(df, 0.5), x, x_complement)
  return np.where(t >= 0, 0.5 * two_sided, 1.0 - 0.5 * two_sided)


class TTest(NamedTuple):
  """Welch's one-sided t-test: statistic t, Welch-Satterthwaite df and p-value P(T >= t), each
  f64[...] (floats for one person)."""
  statistic: np.ndarray
  df: np.ndarray
  p_value: np.ndarray


def _welch(mean, variance, count, ref_mean, ref_variance, ref_count) -> TTest:
  error_k, error_ref = variance / count, ref_variance / ref_count
  error = error_k + error_ref
  if np.any(error <= 0):
    raise ValueError("the scores do not vary in either group: the t-test is undefined; use "
                     "permutation_test")
  statistic = (mean - ref_mean) / np.sqrt(error)
  df = np.square(error) / (np.square(error_k) / (count - 1)
                           + np.square(error_ref) / (ref_count - 1))
  return TTest(statistic, df, student_t_sf(statistic, df))


def _check_scores(name: str, scores, minimum: int) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.ndim != 1 or len(scores) < minimum:
    raise ValueError(f"{name} must be a 1-D array of >= {minimum} scores, got shape "
                     f"{scores.shape}")
  if not np.issubdtype(scores.dtype, np.number) or not np.all(np.isfinite(scores)):
    raise ValueError(f"{name} must be finite numbers (no NaN or inf)")
  return scores.astype(np.float64)


def welch_t_test(scores, population) -> TTest:
  """One person's scores f[k] (k >= 2) against the population's f[n] (n >= 2): Welch's t-test,
  alternative "the person's mean is higher"."""
  scores = _check_scores("scores", scores, 2)
  population = _check_scores("population", population, 2)
  result = _welch(scores.mean(), scores.var(ddof=1), len(scores), population.mean(),
                  population.var(ddof=1), len(population))
  return TTest(*(float(v) for v in result))


def person_t_tests(photo_scores, photo_person, in_population) -> TTest:
  """Welch's t-test of every person's photos against the population's photos, f64[P] each.

  photo_scores: f[R], one score per reference photo; photo_person: int[R] in [0, P); in_population:
  bool[P], the people whose photos form the population. A population person is tested against
  the other population people's photos, never their own. Every person needs >= 2 photos.
  """
  scores = _check_scores("photo_scores", photo_scores, 1)
  person, in_population = np.asarray(photo_person), np.asarray(in_population)
  num_people = len(in_population)
  if in_population.ndim != 1 or in_population.dtype != bool:
    raise ValueError(f"in_population must be bool[P], got {in_population.dtype} "
                     f"{in_population.shape}")
  if (person.shape != scores.shape or not np.issubdtype(person.dtype, np.integer)
      or np.any(person < 0) or np.any(person >= num_people)):
    raise ValueError(f"photo_person must be int[{len(scores)}] in [0, {num_people})")
  count = np.bincount(person, minlength=num_people)
  if np.any(count < 2):
    raise ValueError(f"{np.count_nonzero(count < 2)} people have fewer than 2 photos (e.g. person "
                     f"{int(np.argmax(count < 2))}): use permutation_test for them")
  mean = np.bincount(person, scores, num_people) / count
  variance = np.bincount(person, np.square(scores - mean[person]), num_people) / (count - 1)
  # Population moments around the population mean, less each population person's own photos.
  in_reference = in_population[person]
  centre = scores[in_reference].mean() if in_reference.any() else 0.0
  deviation = scores - centre
  own_sum = np.bincount(person, deviation, num_people) * in_population
  own_squares = np.bincount(person, np.square(deviation), num_people) * in_population
  ref_count = np.count_nonzero(in_reference) - count * in_population
  if np.any(ref_count < 2):
    raise ValueError(f"the population must hold at least 2 photos of people other than each "
                     f"tested person, has {int(ref_count.min())} for person "
                     f"{int(np.argmin(ref_count))}")
  ref_sum = deviation[in_reference].sum() - own_sum
  ref_squares = np.square(deviation[in_reference]).sum() - own_squares
  ref_mean = ref_sum / ref_count
  ref_variance = np.maximum(ref_squares - ref_sum * ref_mean, 0.0) / (ref_count - 1)
  return _welch(mean, variance, count, centre + ref_mean, ref_variance, ref_count)


class PermutationTest(NamedTuple):
  """p_value: P(mean of k pooled scores >= the person's mean); exact: every arrangement was
  counted (else random ones); num_arrangements: how many were counted (or drawn)."""
  p_value: float
  exact: bool
  num_arrangements: int


def permutation_test(scores, population, *, max_exact: int = DEFAULT_MAX_EXACT,
                     num_resamples: int = DEFAULT_NUM_RESAMPLES,
                     seed: int = 0) -> PermutationTest:
  """One person's scores f[k] (k >= 1) against the population's f[n] (n >= 1): the permutation
  test of the mean (module docstring), alternative "the person's scores are higher"."""
  scores = _check_scores("scores", scores, 1)
  population = _check_scores("population", population, 1)
  for name, value in (("max_exact", max_exact), ("num_resamples", num_resamples)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}")
  pooled = np.concatenate([scores, population])
  k, size = len(scores), len(pooled)
  observed = scores.sum()
  threshold = observed - _TIE_TOLERANCE * k * np.abs(pooled).max()
  total = math.comb(size, k)
  as_high = 0
  if total <= max_exact:
    combinations = itertools.combinations(range(size), k)
    while True:
      batch = np.fromiter(itertools.chain.from_iterable(
          itertools.islice(combinations, max(1, _BATCH_SCORES // k))), np.int64).reshape(-1, k)
      if not len(batch):
        return PermutationTest(as_high / total, True, total)
      as_high += int(np.count_nonzero(pooled[batch].sum(axis=1) >= threshold))
  rng = np.random.default_rng(seed)
  batch = max(1, _BATCH_SCORES // size)
  for start in range(0, num_resamples, batch):
    # The k smallest of `size` uniform draws: a uniformly random k-subset of the pooled scores.
    draws = rng.random((min(batch, num_resamples - start), size))
    chosen = np.argpartition(draws, k - 1, axis=1)[:, :k]
    as_high += int(np.count_nonzero(pooled[chosen].sum(axis=1) >= threshold))
  return PermutationTest((1 + as_high) / (1 + num_resamples), False, num_resamples)
