"""A density ratio in face-embedding space (DOMIAS, van Breugel et al., AISTATS 2023).

A generator that saw a person puts more of its samples near that person's face than the people at
large do: score a reference photo x by log p_G(x) - log p_R(x), the density of the generator's
sample embeddings there over the density of a population's photo embeddings there. Needs no
shadow generator; the population density removes the "this face resembles many faces" part that a
raw nearest-sample similarity keeps.

Both densities are kernel densities on the unit sphere S^{D-1} with a von Mises-Fisher kernel,

  p(x) = C_D(kappa) / N  sum_j exp(kappa <x, y_j>),
  log C_D(kappa) = (D/2 - 1) log kappa - (D/2) log(2 pi) - log I_{D/2-1}(kappa),

C_D cancelling from the ratio only if both densities use the same kappa. I_v is evaluated in log
space from its power series (positive terms, so a logsumexp is exact to rounding): for D = 512
and kappa = 10, I_255 is about e^-751, below float64's range.

The sum over N up to 10^5 samples streams through `gmia.kernels.stream_queries` with a running
logsumexp: each chunk of samples meets all queries in one matmul, so memory is O(chunk x queries)
(the exponentials of every kappa fuse into their sums), never queries x samples. For one kappa,
10^5 samples x 7,000 photos x D = 512 (3.6e11 multiply-adds) take 11 s on 2 CPU cores; choosing
among 25 kappas with 2,000 held-out points of 10^5, 7.5 s.

Bandwidth: kappa is chosen from a grid by the held-out log-likelihood, either of a given held-out
set or of a random subset of the points each left out in turn (leave-one-out), or left out with
its whole group: with groups = people, the likelihood of a new person's photo, which is what the
score asks of the population density.

The population must not hold the tested people's photos, or must exclude them per query
(`query_group` / `point_group`): a population person's own other photos would raise p_R at their
photos and lower their score, an advantage no non-population member has.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax import lax

from gmia.kernels import checks, similarity

# Points per scan step: 2,048 x 7,000 queries of float32 cosines is 57 MB, for any number of
# kappas (XLA keeps 12 MB of temporaries for 1,000 queries and 1 or 25 kappas).
DEFAULT_CHUNK_SIZE = 2048
# A geometric grid from a kernel wider than the sphere to one narrower than a person's photos.
DEFAULT_KAPPAS = tuple(float(k) for k in 2.0 ** np.arange(0, 12.5, 0.5))
REDUCTIONS = ("mean", "max", "logmeanexp")
# Held-out points evaluated by select_kappa when no held-out set is given.
DEFAULT_NUM_HELD_OUT = 2000


def log_vmf_normalizer(kappa, dim: int) -> np.ndarray:
  """f64[...]: log C_D(kappa) of the von Mises-Fisher density on S^{D-1} (dim = D >= 2).

  log I_v(kappa), v = D/2 - 1, sums the series sum_k (kappa/2)^(2k+v) / (k! Gamma(k+v+1)) in log
  space, running past its largest term (k near (sqrt(v^2 + kappa^2) - v) / 2) by 20 standard
  deviations of the term distribution, where the neglected tail is below 1e-80 of the sum.
  """
  kappa = np.asarray(kappa, np.float64)
  if not isinstance(dim, (int, np.integer)) or dim < 2:
    raise ValueError(f"dim must be an int >= 2, got {dim!r}")
  if not np.all(kappa > 0) or not np.all(np.isfinite(kappa)):
    raise ValueError(f"kappa must be finite and > 0, got {kappa}")
  order = dim / 2 - 1
  peak = (np.sqrt(order ** 2 + kappa ** 2) - order) / 2
  num_terms = int(np.max(peak + 20 * np.sqrt(peak + 1) + 50))
  k = np.arange(num_terms, dtype=np.float64)
  # lgamma(k+1) and lgamma(k+v+1) by running sums of logs, from one scalar lgamma.
  log_factorial = np.concatenate([[0.0], np.cumsum(np.log(k[1:]))])
  log_gamma = math.lgamma(order + 1) + np.concatenate([[0.0], np.cumsum(np.log(k[1:] + order))])
  log_terms = ((2 * k + order) * np.log(kappa[..., None] / 2) - log_factorial - log_gamma)
  top = np.max(log_terms, axis=-1, keepdims=True)
  log_bessel = top[..., 0] + np.log(np.sum(np.exp(log_terms - top), axis=-1))
  return order * np.log(kappa) - dim / 2 * np.log(2 * np.pi) - log_bessel


@functools.partial(jax.jit, static_argnames=("chunk_size", "exclude"))
def _log_kernel_sums(points, queries, kappas, point_group, query_group, *, chunk_size: int,
                     exclude: bool):
  """(best cosine f32[Q], f32[G, Q]: log sum_j exp(kappa_g <q, y_j>)) over the points y_j
  f[N, D] not in the query's group (exclude=True), streamed over chunks of points; -inf where no
  point is left."""
  num_points = points.shape[0]
  precision = lax.Precision.HIGHEST if points.dtype == jnp.float32 else lax.Precision.DEFAULT

  def step(carry, chunk, rows):
    best, total = carry  # best cosine f32[Q]; sum of exp(kappa (cos - best)) f32[G, Q]
    cosine = lax.dot_general(queries, chunk, (((1,), (1,)), ((), ())), precision=precision,
                             preferred_element_type=jnp.float32)
    valid = (rows < num_points)[None, :]
    if exclude:
      valid = valid & (point_group[rows][None, :] != query_group[:, None])
    cosine = jnp.where(valid, cosine, -jnp.inf)
    new_best = jnp.maximum(best, jnp.max(cosine, axis=1))
    # Kappas are positive, so the largest cosine gives every kappa's largest term: one running
    # maximum serves the whole grid.
    shift = jnp.where(jnp.isfinite(new_best), new_best, 0.0)
    rescale = jnp.exp(kappas[:, None] * (best - shift)[None, :])
    terms = jnp.exp(kappas[:, None, None] * (cosine - shift[:, None])[None])
    return (new_best, total * rescale + jnp.sum(terms, axis=2)), None

  init = (jnp.full(queries.shape[0], -jnp.inf, jnp.float32),
          jnp.zeros((kappas.shape[0], queries.shape[0]), jnp.float32))
  (best, total), _ = similarity.stream_queries(points, chunk_size, init, step)
  return best, kappas[:, None] * best[None, :] + jnp.log(total)


def log_kernel_sums(queries, points, kappas, *,
                    chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[np.ndarray, np.ndarray]:
  """(best f32[Q], sums f64[G, Q]): each query's largest cosine to the points, and the log of
  its unnormalised kernel sum sum_j exp(kappa_g <q, y_j>) for every kappa. Sums of disjoint
  point sets combine by logaddexp, so a stream of sample chunks accumulates them (the density is
  sums + log C_D(kappa) - log N)."""
  queries, points = jnp.asarray(queries), jnp.asarray(points)
  kappas = _check_kappas(kappas)
  best, sums = _log_kernel_sums(points, queries, jnp.asarray(kappas, jnp.float32),
                                jnp.zeros(points.shape[0], jnp.int32),
                                jnp.zeros(queries.shape[0], jnp.int32),
                                chunk_size=int(chunk_size), exclude=False)
  return np.asarray(best), np.asarray(sums, np.float64)


def _check_kappas(kappas) -> np.ndarray:
  kappas = np.asarray(kappas, np.float64).reshape(-1)
  if not len(kappas) or not np.all(np.isfinite(kappas)) or not np.all(kappas > 0):
    raise ValueError(f"kappas must be a non-empty list of finite values > 0, got {kappas}")
  return kappas


def _groups(query_group, point_group, num_queries: int,
            num_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(query_group int32[Q], point_group int32[N], points left per query i64[Q]); without groups,
  every query sees every point. Refuses a query whose group holds every point."""
  if (query_group is None) != (point_group is None):
    raise ValueError("query_group and point_group go together: give both or neither")
  if query_group is None:
    return (np.zeros(num_queries, np.int32), np.ones(num_points, np.int32),
            np.full(num_queries, num_points))
  query_group, point_group = np.asarray(query_group), np.asarray(point_group)
  for name, group, n in (("query_group", query_group, num_queries),
                         ("point_group", point_group, num_points)):
    if group.shape != (n,) or not np.issubdtype(group.dtype, np.integer):
      raise ValueError(f"{name} must be int[{n}], got {group.dtype} {group.shape}")
  values, counts = np.unique(point_group, return_counts=True)
  position = np.minimum(np.searchsorted(values, query_group), len(values) - 1)
  excluded = np.where(values[position] == query_group, counts[position], 0)
  left = num_points - excluded
  if np.any(left == 0):
    raise ValueError(f"query {int(np.argmin(left))} has no point outside its own group")
  return query_group.astype(np.int32), point_group.astype(np.int32), left


def log_densities(queries, points, kappas, *, query_group=None, point_group=None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """f64[G, Q]: log of the vMF kernel density of `points` at each query, for each kappa.

  queries: f32|bf16[Q, D], points: f32|bf16[N, D], unit vectors; kappas: f[G] > 0. With
  query_group int[Q] and point_group int[N], each query's density leaves out the points of its
  own group (a photo itself, or its person's photos) and averages over the rest.
  """
  queries, points = jnp.asarray(queries), jnp.asarray(points)
  try:
    checks.check_embeddings(queries, points, "cosine")
  except ValueError as error:  # The kernels call the second set "refs".
    raise ValueError(str(error).replace("refs", "points")) from None
  kappas = _check_kappas(kappas)
  if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
  query_group, point_group, count = _groups(query_group, point_group, queries.shape[0],
                                            points.shape[0])
  _, sums = _log_kernel_sums(points, queries, jnp.asarray(kappas, jnp.float32),
                             jnp.asarray(point_group), jnp.asarray(query_group),
                             chunk_size=int(chunk_size), exclude=bool(np.any(count < len(points))))
  return (np.asarray(sums, np.float64) + log_vmf_normalizer(kappas, queries.shape[1])[:, None]
          - np.log(count)[None, :])


def select_kappa(points, kappas=DEFAULT_KAPPAS, *, held_out=None, groups=None,
                 num_held_out: int = DEFAULT_NUM_HELD_OUT, seed: int = 0,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[float, np.ndarray]:
  """The kappa of the grid with the highest mean held-out log-likelihood of the KDE of `points`.

  points: f32[N, D] unit. held_out: f32[H, D], a held-out set drawn like the points; without it,
  min(num_held_out, N) points drawn at random (seeded) are each left out of the density at
  themselves, with their whole group if groups int[N] is given (e.g. the person of each photo).
  Returns (kappa, mean log-likelihood f64[G] per grid kappa). A best kappa at an end of the grid
  is logged: widen the grid.
  """
  kappas = _check_kappas(kappas)
  if held_out is not None:
    if groups is not None:
      raise ValueError("groups apply to leave-out selection; a held_out set needs none")
    log_likelihood = log_densities(held_out, points, kappas, chunk_size=chunk_size)
  else:
    num_points = np.shape(points)[0]
    if num_points < 2:
      raise ValueError(f"leave-out bandwidth selection needs at least 2 points, got {num_points}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(num_points, min(num_held_out, num_points), replace=False))
    point_group = np.arange(num_points) if groups is None else np.asarray(groups)
    if point_group.shape != (num_points,):
      raise ValueError(f"groups must be int[{num_points}], got shape {point_group.shape}")
    log_likelihood = log_densities(np.asarray(points)[chosen], points, kappas,
                                   query_group=point_group[chosen], point_group=point_group,
                                   chunk_size=chunk_size)
  mean = log_likelihood.mean(axis=1)
  best = int(np.argmax(mean))
  if best in (0, len(kappas) - 1) and len(kappas) > 1:
    logging.warning("the held-out likelihood is best at kappa %g, an end of the grid [%g, %g]: "
                    "widen the grid", kappas[best], kappas[0], kappas[-1])
  return float(kappas[best]), mean


def log_density_ratio(queries, samples, population, *, kappa_samples: float,
                      kappa_population: float, query_group=None, population_group=None,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
  """f64[Q]: log p_G(x) - log p_R(x) at each query photo x f32[Q, D] (unit).

  samples: f32[N, D], the generator's sample embeddings (p_G); population: f32[M, D], the
  population's photo embeddings (p_R); each density with its own kappa (select_kappa). With
  query_group int[Q] and population_group int[M] (people), p_R at a query leaves out the
  population photos of the query's own person.
  """
  log_generator = log_densities(queries, samples, [kappa_samples], chunk_size=chunk_size)[0]
  log_population = log_densities(queries, population, [kappa_population],
                                 query_group=query_group, point_group=population_group,
                                 chunk_size=chunk_size)[0]
  return log_generator - log_population


def person_scores(photo_scores: np.ndarray, photo_person: np.ndarray, num_people: int, *,
                  reduction: str = "mean") -> np.ndarray:
  """f64[P]: one score per person from their photos' scores f[R] (photo_person int[R] in
  [0, num_people), every person with a photo).

  mean (the default): the mean log ratio, the log-likelihood ratio of the person's photos taken
  as independent, per photo, so people with more photos are not favoured; max: the best photo,
  which grows with the number of photos even with no leak; logmeanexp: log of the mean ratio,
  between the two.
  """
  photo_scores, photo_person = np.asarray(photo_scores, np.float64), np.asarray(photo_person)
  if photo_scores.ndim != 1 or photo_person.shape != photo_scores.shape:
    raise ValueError(f"photo_scores and photo_person must be 1-D of one length, got "
                     f"{photo_scores.shape} and {photo_person.shape}")
  if not np.all(np.isfinite(photo_scores)):
    raise ValueError(f"photo_scores hold {np.count_nonzero(~np.isfinite(photo_scores))} "
                     "non-finite values (NaN or inf)")
  if not np.issubdtype(photo_person.dtype, np.integer):
    raise ValueError(f"photo_person must be integers, got {photo_person.dtype}")
  count = np.bincount(photo_person, minlength=num_people) if len(photo_person) else np.zeros(0)
  if len(count) != num_people or np.any(photo_person < 0) or np.any(count == 0):
    raise ValueError(f"photo_person must cover people 0..{num_people - 1}, each with a photo")
  if reduction == "mean":
    return np.bincount(photo_person, photo_scores, num_people) / count
  best = np.full(num_people, -np.inf)
  np.maximum.at(best, photo_person, photo_scores)
  if reduction == "max":
    return best
  if reduction == "logmeanexp":
    spread = np.bincount(photo_person, np.exp(photo_scores - best[photo_person]), num_people)
    return best + np.log(spread / count)
  raise ValueError(f"unknown reduction {reduction!r}; reductions: {REDUCTIONS}")
