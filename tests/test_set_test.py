"""The person-level set tests against scipy.stats (ttest_ind, t, permutation_test)."""

import itertools

import numpy as np
import pytest
from scipy import stats

from gmia.attacks import set_test


def test_student_t_tail_matches_scipy_over_statistics_and_degrees_of_freedom():
  rng = np.random.default_rng(0)
  t = np.concatenate([rng.normal(0, 3, 2000), rng.normal(0, 40, 200), [0.0, 1e-9, -1e-9, 1e3]])
  df = np.exp(rng.uniform(np.log(0.3), np.log(1e4), len(t)))
  found, expected = set_test.student_t_sf(t, df), stats.t.sf(t, df)
  representable = expected > 1e-300
  np.testing.assert_allclose(found[representable], expected[representable], rtol=1e-10)
  assert np.all(found[~representable] < 1e-290)
  with pytest.raises(ValueError, match="degrees of freedom"):
    set_test.student_t_sf(1.0, 0.0)


@pytest.mark.parametrize("k, n, shift", [(2, 5, 0.0), (3, 1000, 0.1), (10, 40, -0.2),
                                         (35, 600, 0.05)])
def test_welch_t_test_matches_scipy_ttest_ind(k, n, shift):
  rng = np.random.default_rng(k)
  scores, population = rng.normal(0.3 + shift, 0.1, k), rng.normal(0.3, 0.2, n)
  found = set_test.welch_t_test(scores, population)
  expected = stats.ttest_ind(scores, population, equal_var=False, alternative="greater")
  assert found.statistic == pytest.approx(expected.statistic, rel=1e-12)
  assert found.df == pytest.approx(expected.df, rel=1e-12)
  assert found.p_value == pytest.approx(expected.pvalue, rel=1e-10)


def test_person_t_tests_leave_each_population_person_out_of_their_own_reference():
  rng = np.random.default_rng(1)
  photos = [2, 5, 3, 4, 6, 2, 3, 8]
  person = rng.permutation(np.repeat(np.arange(8), photos))
  scores = rng.normal(0.3, 0.1, len(person)) + 0.05 * person
  in_population = np.array([False, False, True, True, True, True, True, False])
  found = set_test.person_t_tests(scores, person, in_population)
  for p in range(8):
    reference = scores[in_population[person] & (person != p)]
    expected = stats.ttest_ind(scores[person == p], reference, equal_var=False,
                               alternative="greater")
    assert found.statistic[p] == pytest.approx(expected.statistic, rel=1e-10)
    assert found.df[p] == pytest.approx(expected.df, rel=1e-10)
    assert found.p_value[p] == pytest.approx(expected.pvalue, rel=1e-9)


def test_population_p_values_are_uniform_without_person_effects():
  # Photos drawn independently of the person: the population's own p-values are uniform, so
  # about 5% fall below 0.05.
  rng = np.random.default_rng(2)
  person = np.repeat(np.arange(400), 5)
  found = set_test.person_t_tests(rng.normal(size=len(person)), person, np.ones(400, bool))
  assert 0.02 < np.mean(found.p_value < 0.05) < 0.09
  assert 0.4 < np.median(found.p_value) < 0.6


def _scipy_permutation(scores, population, **options):
  return stats.permutation_test(
      (scores, population), lambda x, y, axis: np.mean(x, axis) - np.mean(y, axis),
      permutation_type="independent", alternative="greater", vectorized=True, **options).pvalue


def test_exact_permutation_test_matches_scipy_and_enumeration():
  rng = np.random.default_rng(3)
  scores, population = rng.normal(0.5, 0.1, 3), rng.normal(0.3, 0.1, 12)
  found = set_test.permutation_test(scores, population)
  assert found.exact and found.num_arrangements == 455  # C(15, 3)
  assert found.p_value == pytest.approx(_scipy_permutation(scores, population,
                                                           n_resamples=np.inf), abs=1e-15)
  pooled = np.concatenate([scores, population])
  sums = np.array([pooled[list(c)].sum() for c in itertools.combinations(range(15), 3)])
  assert found.p_value == np.mean(sums >= scores.sum() - 1e-12)
  # Ties count as high: integer counts where every photo of the population scores the same.
  tied = set_test.permutation_test(np.array([1.0, 1.0]), np.ones(6))
  assert tied.p_value == 1.0


def test_random_permutation_test_is_seeded_and_agrees_with_the_exact_p_value():
  rng = np.random.default_rng(4)
  scores, population = rng.normal(0.35, 0.1, 4), rng.normal(0.3, 0.1, 16)
  exact = set_test.permutation_test(scores, population)
  assert exact.exact and exact.num_arrangements == 4845
  drawn = set_test.permutation_test(scores, population, max_exact=1000, num_resamples=20_000,
                                    seed=7)
  assert not drawn.exact and drawn.num_arrangements == 20_000
  assert drawn == set_test.permutation_test(scores, population, max_exact=1000,
                                            num_resamples=20_000, seed=7)
  standard_error = np.sqrt(exact.p_value * (1 - exact.p_value) / 20_000)
  assert abs(drawn.p_value - exact.p_value) < 5 * standard_error
  # A member far above a large population: the smallest p-value the resamples allow.
  strong = set_test.permutation_test(np.full(3, 5.0), rng.normal(size=2000), num_resamples=999)
  assert strong.p_value == 1 / 1000


def test_bad_inputs_are_refused():
  with pytest.raises(ValueError, match=">= 2 scores"):
    set_test.welch_t_test([0.5], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="finite"):
    set_test.welch_t_test([0.5, np.nan], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="do not vary"):
    set_test.welch_t_test([0.5, 0.5], [0.1, 0.1])
  with pytest.raises(ValueError, match="fewer than 2 photos"):
    set_test.person_t_tests(np.zeros(5), np.array([0, 0, 1, 2, 2]), np.ones(3, bool))
  with pytest.raises(ValueError, match="at least 2 photos of people other"):
    set_test.person_t_tests(np.arange(6.0), np.array([0, 0, 1, 1, 2, 2]),
                            np.array([True, False, False]))
  with pytest.raises(ValueError, match="photo_person must be"):
    set_test.person_t_tests(np.zeros(4), np.array([0, 0, 1, 3]), np.ones(2, bool))
  with pytest.raises(ValueError, match=">= 1 scores"):
    set_test.permutation_test([], [0.1])
  with pytest.raises(ValueError, match="num_resamples must be"):
    set_test.permutation_test([0.5], [0.1], num_resamples=0)
