"""The von Mises-Fisher density ratio against scipy's vMF and float64 brute force."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from gmia import metrics
from gmia.attacks import density_ratio as dr

D = 8


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _vmf(rng, centres, kappa, n):
  """n draws f32[n, D] around centres picked at random, and which centre each came from."""
  which = rng.integers(0, len(centres), n)
  draws = np.concatenate([stats.vonmises_fisher(centres[c], kappa).rvs(int(np.sum(which == c)),
                                                                       random_state=rng)
                          for c in range(len(centres))])
  return draws.astype(np.float32), np.sort(which)


def _brute_log_density(queries, points, kappa, exclude=None):
  """f64[Q]: log of the mean of scipy's vMF densities centred at the points, float64."""
  q, p = np.asarray(queries, np.float64), np.asarray(points, np.float64)
  log_pdf = np.stack([stats.vonmises_fisher(_unit(y), kappa).logpdf(_unit(q)) for y in p], axis=1)
  if exclude is not None:
    log_pdf = np.where(exclude, -np.inf, log_pdf)
  return special.logsumexp(log_pdf, axis=1) - np.log(np.sum(np.isfinite(log_pdf), axis=1))


def test_log_normalizer_against_scipy_bessel_and_its_recurrence_where_scipy_underflows():
  kappa = np.array([0.01, 1.0, 30.0, 700.0, 4096.0])
  for dim in (2, 3, 8, 64):
    order = dim / 2 - 1
    reference = (order * np.log(kappa) - dim / 2 * np.log(2 * np.pi)
                 - np.log(special.ive(order, kappa)) - kappa)
    np.testing.assert_allclose(dr.log_vmf_normalizer(kappa, dim), reference, rtol=1e-12)
  # D = 512, kappa = 10: I_255(10) ~ e^-751 underflows float64. Check I_{v-1} - I_{v+1} =
  # (2v / kappa) I_v in log space, and the kappa -> 0 limit (the sphere's uniform density).
  def log_bessel(order, kappa):
    dim = 2 * order + 2
    return order * np.log(kappa) - dim / 2 * np.log(2 * np.pi) - dr.log_vmf_normalizer(kappa, dim)
  kappa = np.array([1.0, 10.0, 100.0, 1000.0])
  order = 255
  lower, upper = log_bessel(order - 1, kappa), log_bessel(order + 1, kappa)
  np.testing.assert_allclose(lower + np.log1p(-np.exp(upper - lower)),
                             np.log(2 * order / kappa) + log_bessel(order, kappa), rtol=1e-12)
  log_area = np.log(2) + 256 * np.log(np.pi) - special.gammaln(256)
  assert dr.log_vmf_normalizer(1e-8, 512) == pytest.approx(-log_area, rel=1e-12)


def test_log_densities_match_scipy_vmf_mixture_with_and_without_exclusion():
  rng = np.random.default_rng(0)
  points = _unit(rng.normal(size=(45, D))).astype(np.float32)
  queries = _unit(rng.normal(size=(6, D))).astype(np.float32)
  kappas = [0.5, 4.0, 40.0]
  found = dr.log_densities(queries, points, kappas, chunk_size=8)  # 45 = 6 chunks, padded
  for g, kappa in enumerate(kappas):
    np.testing.assert_allclose(found[g], _brute_log_density(queries, points, kappa), atol=2e-5)
  # Leave-group-out: queries in groups 0..5, points in groups 0..4 by row.
  query_group, point_group = np.arange(6), np.arange(45) % 5
  found = dr.log_densities(queries, points, kappas, query_group=query_group,
                           point_group=point_group, chunk_size=8)
  exclude = point_group[None, :] == query_group[:, None]
  for g, kappa in enumerate(kappas):
    np.testing.assert_allclose(found[g], _brute_log_density(queries, points, kappa, exclude),
                               atol=2e-5)
  # bfloat16 embeddings stream the same way (products accumulate in float32).
  rounded = dr.log_densities(jnp.asarray(queries, jnp.bfloat16), jnp.asarray(points, jnp.bfloat16),
                             kappas[:1])
  np.testing.assert_allclose(rounded[0], _brute_log_density(queries, points, kappas[0]), atol=2e-2)


def test_no_queries_by_points_matrix_is_built():
  num_points, num_queries, chunk = 1000, 7, 64  # 16 chunks of 63 points
  hlo = dr._log_kernel_sums.lower(
      jnp.zeros((num_points, D)), jnp.zeros((num_queries, D)), jnp.ones(3), jnp.zeros(num_points,
                                                                                   jnp.int32),
      jnp.zeros(num_queries, jnp.int32), chunk_size=chunk, exclude=True).as_text()
  assert f"3x{num_queries}x63xf32" in hlo  # one chunk of points against every query and kappa
  for padded in (num_points, 1008):  # never every point against the queries
    assert f"{num_queries}x{padded}x" not in hlo and f"{padded}x{num_queries}x" not in hlo


def test_held_out_likelihood_finds_the_true_kappa_of_a_vmf_mixture():
  # The true density is the vMF kernel density of the centres at kappa 20: by Gibbs' inequality
  # the expected held-out log-likelihood of the KDE of the centres peaks at that kappa.
  rng = np.random.default_rng(1)
  centres = _unit(rng.normal(size=(30, D)))
  held_out, _ = _vmf(rng, centres, 20.0, 3000)
  grid = [5.0, 10.0, 20.0, 40.0, 80.0]
  kappa, log_likelihood = dr.select_kappa(centres.astype(np.float32), grid, held_out=held_out)
  assert kappa == 20.0
  assert np.argmax(log_likelihood) == 2
  # Leave-one-out on a sample of the mixture agrees with brute force over every point.
  points, which = _vmf(rng, centres[:6], 20.0, 60)
  kappa, log_likelihood = dr.select_kappa(points, grid, num_held_out=60)
  exclude = np.eye(60, dtype=bool)
  brute = [np.mean(_brute_log_density(points, points, k, exclude)) for k in grid]
  np.testing.assert_allclose(log_likelihood, brute, atol=1e-4)
  assert kappa == grid[int(np.argmax(brute))]
  # Leave-one-group-out leaves each point's whole centre out.
  _, log_likelihood = dr.select_kappa(points, grid, groups=which, num_held_out=60)
  exclude = which[None, :] == which[:, None]
  brute = [np.mean(_brute_log_density(points, points, k, exclude)) for k in grid]
  np.testing.assert_allclose(log_likelihood, brute, atol=1e-4)


def test_planted_member_whose_photos_the_generator_copies_scores_first():
  rng = np.random.default_rng(2)
  people = _unit(rng.normal(size=(40, D)))
  photos, photo_person = _vmf(rng, people, 60.0, 400)
  # The generator draws faces around its 10 training people 0..9, half of them near copies of
  # person 0's own photos; the population is people 20..39 (tested people 0..19 are not in it).
  copies = photos[photo_person == 0]
  near_copies = _unit(np.repeat(copies, 20, axis=0) + 0.02 * rng.normal(size=(20 * len(copies),
                                                                               D)))
  others, _ = _vmf(rng, people[:10], 60.0, len(near_copies))
  samples = np.concatenate([near_copies, others]).astype(np.float32)
  tested = photo_person < 20
  population = photos[~tested]
  kappa_samples, _ = dr.select_kappa(samples, num_held_out=500)
  kappa_population, _ = dr.select_kappa(population, groups=photo_person[~tested])
  ratio = dr.log_density_ratio(photos[tested], samples, population, kappa_samples=kappa_samples,
                               kappa_population=kappa_population)
  for reduction in dr.REDUCTIONS:
    scores = dr.person_scores(ratio, photo_person[tested], 20, reduction=reduction)
    assert int(np.argmax(scores)) == 0, reduction
  scores = dr.person_scores(ratio, photo_person[tested], 20)
  assert metrics.auc(scores, np.arange(20) < 10) > 0.9  # the other training people too


def test_population_people_leave_themselves_out():
  rng = np.random.default_rng(3)
  people = _unit(rng.normal(size=(8, D)))
  photos = np.concatenate([stats.vonmises_fisher(c, 50.0).rvs(10, random_state=rng)
                           for c in people]).astype(np.float32)
  person = np.repeat(np.arange(8), 10)
  samples = _unit(rng.normal(size=(100, D))).astype(np.float32)
  own = dr.log_density_ratio(photos, samples, photos, kappa_samples=5.0, kappa_population=50.0,
                             query_group=person, population_group=person)
  others = [dr.log_density_ratio(photos[person == p], samples, photos[person != p],
                                 kappa_samples=5.0, kappa_population=50.0) for p in range(8)]
  np.testing.assert_allclose(own, np.concatenate(others), atol=1e-4)


def test_person_scores_reductions_against_a_loop():
  rng = np.random.default_rng(4)
  person = rng.permutation(np.repeat(np.arange(5), [1, 3, 2, 6, 4]))
  scores = rng.normal(size=len(person)) * 30
  for reduction, reduce in (("mean", np.mean), ("max", np.max),
                            ("logmeanexp", lambda x: special.logsumexp(x) - np.log(len(x)))):
    expected = [reduce(scores[person == p]) for p in range(5)]
    np.testing.assert_allclose(dr.person_scores(scores, person, 5, reduction=reduction),
                               expected, rtol=1e-12)


def test_bad_inputs_are_refused():
  rng = np.random.default_rng(5)
  x = _unit(rng.normal(size=(4, D))).astype(np.float32)
  with pytest.raises(ValueError, match="unit-norm"):
    dr.log_densities(x * 2, x, [1.0])
  with pytest.raises(ValueError, match="contain NaN"):
    dr.log_densities(np.full_like(x, np.nan), x, [1.0])
  with pytest.raises(ValueError, match="queries have dimension"):
    dr.log_densities(x[:, :4], x, [1.0])
  with pytest.raises(ValueError, match="points is empty"):
    dr.log_densities(x, x[:0], [1.0])
  with pytest.raises(ValueError, match="kappas must be"):
    dr.log_densities(x, x, [0.0])
  with pytest.raises(ValueError, match="no point outside its own group"):
    dr.log_densities(x, x, [1.0], query_group=np.zeros(4, int), point_group=np.zeros(4, int))
  with pytest.raises(ValueError, match="give both or neither"):
    dr.log_densities(x, x, [1.0], query_group=np.zeros(4, int))
  with pytest.raises(ValueError, match="each with a photo"):
    dr.person_scores(np.zeros(3), np.array([0, 0, 2]), 3)
  with pytest.raises(ValueError, match="unknown reduction"):
    dr.person_scores(np.zeros(3), np.array([0, 1, 2]), 3, reduction="median")
  with pytest.raises(ValueError, match="non-finite"):
    dr.person_scores(np.array([0, np.inf, 0]), np.array([0, 1, 2]), 3)
