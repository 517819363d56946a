"""Similarity kernels against numpy brute force over the full queries x references matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmia import kernels
from gmia.kernels import similarity

Q, R, D, CHUNK = 37, 53, 16, 8
NUM_IDENTITIES = 8  # identity 7 has no photos


def unit_rows(rng, n, d=D):
  x = rng.standard_normal((n, d))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  return unit_rows(rng, Q), unit_rows(rng, R), rng.integers(0, NUM_IDENTITIES - 1, R)


# Brute-force references: float64, whole matrices, stable sorts (ties to the smaller index).


def brute_closeness(queries, refs, metric):
  q, r = np.asarray(queries, np.float64), np.asarray(refs, np.float64)
  if metric == "cosine":
    return q @ r.T
  return -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)


def to_metric(closeness, metric):
  return closeness if metric == "cosine" else -closeness


def brute_top_k(queries, refs, k, metric="cosine"):
  c = brute_closeness(queries, refs, metric)
  index = np.argsort(-c, axis=1, kind="stable")[:, :k]
  return to_metric(np.take_along_axis(c, index, 1), metric), index


def brute_identity_closeness(queries, refs, ref_identity, num_identities, metric="cosine"):
  """[I, Q]: each sample's closeness to each identity's nearest photo."""
  c = brute_closeness(queries, refs, metric)
  return np.stack([c[:, ref_identity == i].max(1) if np.any(ref_identity == i)
                   else np.full(len(queries), -np.inf) for i in range(num_identities)])


def brute_best_match(queries, refs, ref_identity, num_identities, metric="cosine"):
  c = brute_closeness(queries, refs, metric)
  best, best_query, best_ref = [], [], []
  for i in range(num_identities):
    cols = np.flatnonzero(ref_identity == i)
    if not len(cols):
      best.append(-np.inf), best_query.append(-1), best_ref.append(-1)
      continue
    sub = c[:, cols]
    qi, ri = np.unravel_index(np.argmax(sub), sub.shape)  # row-major: smallest query first
    best.append(sub[qi, ri]), best_query.append(qi), best_ref.append(cols[ri])
  return to_metric(np.array(best), metric), np.array(best_query), np.array(best_ref)


def brute_top_k_per_identity(queries, refs, ref_identity, num_identities, k, metric="cosine"):
  c = brute_identity_closeness(queries, refs, ref_identity, num_identities, metric)
  index = np.argsort(-c, axis=1, kind="stable")[:, :k]
  index = np.where(np.isfinite(np.take_along_axis(c, index, 1)), index, -1)
  return to_metric(np.take_along_axis(c, np.maximum(index, 0), 1), metric), index


def brute_count_above(queries, refs, ref_identity, num_identities, threshold):
  return (brute_identity_closeness(queries, refs, ref_identity, num_identities) > threshold).sum(1)


def brute_top_k_identities(queries, refs, ref_identity, num_identities, k):
  c = brute_identity_closeness(queries, refs, ref_identity, num_identities).T
  index = np.argsort(-c, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(c, index, 1), index


def assert_values(actual, expected, atol=1e-5):
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  finite = np.isfinite(expected)
  np.testing.assert_array_equal(np.isfinite(actual), finite)
  np.testing.assert_array_equal(actual[~finite], expected[~finite])
  np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
@pytest.mark.parametrize("ref_chunk_size", [None, 7])
def test_top_k_matches_brute_force(data, metric, ref_chunk_size):
  queries, refs, _ = data
  values, index = kernels.top_k(queries, refs, 5, chunk_size=CHUNK, ref_chunk_size=ref_chunk_size,
                                metric=metric)
  expected_values, expected_index = brute_top_k(queries, refs, 5, metric)
  assert values.shape == (Q, 5) and index.dtype == jnp.int32
  np.testing.assert_array_equal(index, expected_index)
  assert_values(values, expected_values)


def test_top_k_sqeuclidean_on_general_vectors():
  rng = np.random.default_rng(1)
  queries = (3 * rng.standard_normal((Q, D))).astype(np.float32)
  refs = (3 * rng.standard_normal((R, D)) + 1).astype(np.float32)
  values, index = kernels.top_k(queries, refs, 4, chunk_size=CHUNK, metric="sqeuclidean")
  expected_values, expected_index = brute_top_k(queries, refs, 4, "sqeuclidean")
  np.testing.assert_array_equal(index, expected_index)
  np.testing.assert_allclose(values, expected_values, rtol=1e-5)


def test_top_k_with_k_equal_to_refs_and_a_chunk_larger_than_the_queries(data):
  queries, refs, _ = data
  values, index = kernels.top_k(queries[:3], refs, R, chunk_size=1000, ref_chunk_size=10)
  expected_values, expected_index = brute_top_k(queries[:3], refs, R)
  np.testing.assert_array_equal(index, expected_index)
  assert_values(values, expected_values)


def test_ties_go_to_the_smallest_index():
  # One-hot embeddings make every product exactly 0 or 1, so ties are exact.
  eye = np.eye(4, dtype=np.float32)
  refs = eye[[2, 0, 2, 1, 0, 3, 2]]
  queries = eye[[0, 2, 2, 3, 1]]
  ref_identity = np.array([1, 0, 1, 1, 0, 2, 2])
  _, index = kernels.top_k(queries, refs, 3, chunk_size=2, ref_chunk_size=3)
  np.testing.assert_array_equal(index, brute_top_k(queries, refs, 3)[1])
  for actual, expected in zip(kernels.best_match_per_identity(queries, refs, ref_identity, 3,
                                                              chunk_size=2),
                              brute_best_match(queries, refs, ref_identity, 3)):
    np.testing.assert_array_equal(actual, expected)
  np.testing.assert_array_equal(kernels.top_k_per_identity(queries, refs, ref_identity, 3, 4,
                                                           chunk_size=2)[1],
                                brute_top_k_per_identity(queries, refs, ref_identity, 3, 4)[1])


@pytest.mark.parametrize("ref_chunk_size", [None, 950])
def test_wide_rows_select_groups_first_and_keep_ties_exact(ref_chunk_size):
  # Small integer vectors: every squared distance is an exact small integer, so ties abound,
  # including at the k-th place; 1003 references take the grouped top-k path.
  rng = np.random.default_rng(5)
  queries = rng.integers(0, 3, (29, 4)).astype(np.float32)
  refs = rng.integers(0, 3, (1003, 4)).astype(np.float32)
  values, index = kernels.top_k(queries, refs, 7, chunk_size=CHUNK, ref_chunk_size=ref_chunk_size,
                                metric="sqeuclidean")
  expected_values, expected_index = brute_top_k(queries, refs, 7, "sqeuclidean")
  np.testing.assert_array_equal(index, expected_index)
  np.testing.assert_array_equal(values, expected_values)


def test_wide_rows_of_identities_and_samples():
  rng = np.random.default_rng(6)
  queries, refs = unit_rows(rng, 301), unit_rows(rng, 700)
  ref_identity = rng.integers(0, 650, 700)
  _, identity = kernels.top_k_identities(queries, refs, ref_identity, 650, 2, chunk_size=100)
  np.testing.assert_array_equal(identity, brute_top_k_identities(queries, refs, ref_identity,
                                                                 650, 2)[1])
  _, query = kernels.top_k_per_identity(queries, refs, ref_identity, 650, 2, chunk_size=301)
  np.testing.assert_array_equal(query, brute_top_k_per_identity(queries, refs, ref_identity,
                                                                650, 2)[1])


@pytest.mark.parametrize("metric", ["cosine", "sqeuclidean"])
def test_best_match_per_identity(data, metric):
  queries, refs, ref_identity = data
  best, best_query, best_ref = kernels.best_match_per_identity(
      queries, refs, ref_identity, NUM_IDENTITIES, chunk_size=CHUNK, metric=metric)
  expected_best, expected_query, expected_ref = brute_best_match(queries, refs, ref_identity,
                                                                 NUM_IDENTITIES, metric)
  np.testing.assert_array_equal(best_query, expected_query)
  np.testing.assert_array_equal(best_ref, expected_ref)
  assert_values(best, expected_best)
  assert best_query[-1] == -1 and best_ref[-1] == -1  # identity 7 has no photos


def test_top_k_per_identity(data):
  queries, refs, ref_identity = data
  values, query = kernels.top_k_per_identity(queries, refs, ref_identity, NUM_IDENTITIES, 6,
                                             chunk_size=CHUNK)
  expected_values, expected_query = brute_top_k_per_identity(queries, refs, ref_identity,
                                                             NUM_IDENTITIES, 6)
  np.testing.assert_array_equal(query, expected_query)
  assert_values(values, expected_values)


def test_count_above(data):
  queries, refs, ref_identity = data
  for threshold in (-1.5, 0.2, 0.5, 0.99):
    counts = kernels.count_above(queries, refs, ref_identity, NUM_IDENTITIES, threshold,
                                 chunk_size=CHUNK)
    np.testing.assert_array_equal(counts, brute_count_above(queries, refs, ref_identity,
                                                            NUM_IDENTITIES, threshold))


def test_count_above_sqeuclidean_counts_distances_below_threshold(data):
  queries, refs, ref_identity = data
  # For unit vectors ||q - r||^2 < 2 - 2t exactly when cos(q, r) > t.
  counts = kernels.count_above(queries, refs, ref_identity, NUM_IDENTITIES, 2 - 2 * 0.4,
                               chunk_size=CHUNK, metric="sqeuclidean")
  np.testing.assert_array_equal(counts, brute_count_above(queries, refs, ref_identity,
                                                          NUM_IDENTITIES, 0.4))


def test_top_k_identities(data):
  queries, refs, ref_identity = data
  values, identity = kernels.top_k_identities(queries, refs, ref_identity, NUM_IDENTITIES, 3,
                                              chunk_size=CHUNK)
  expected_values, expected_identity = brute_top_k_identities(queries, refs, ref_identity,
                                                              NUM_IDENTITIES, 3)
  np.testing.assert_array_equal(identity, expected_identity)
  assert_values(values, expected_values)


def test_bfloat16_inputs_accumulate_in_float32(data):
  queries, refs, ref_identity = data
  q16, r16 = jnp.asarray(queries, jnp.bfloat16), jnp.asarray(refs, jnp.bfloat16)
  values, index = kernels.top_k(q16, r16, 5, chunk_size=CHUNK)
  assert values.dtype == jnp.float32
  # Exact against the bf16-rounded inputs: bf16 products are exact in float32.
  rounded_q, rounded_r = np.asarray(q16, np.float32), np.asarray(r16, np.float32)
  exact = brute_closeness(rounded_q, rounded_r, "cosine")
  assert_values(values, np.take_along_axis(exact, np.asarray(index), 1), atol=1e-5)
  # Close to the float32 answer: the chosen references are within bf16 rounding of the best.
  full = brute_closeness(queries, refs, "cosine")
  expected_values, _ = brute_top_k(queries, refs, 5)
  np.testing.assert_allclose(np.take_along_axis(full, np.asarray(index), 1), expected_values,
                             atol=2e-2)
  best, _, _ = kernels.best_match_per_identity(q16, r16, ref_identity, NUM_IDENTITIES,
                                               chunk_size=CHUNK)
  assert_values(best, brute_best_match(queries, refs, ref_identity, NUM_IDENTITIES)[0], atol=2e-2)


def test_no_queries_by_refs_matrix_is_built(data):
  queries, refs, _ = data
  hlo = similarity.run_whole.lower(
      (jnp.asarray(queries), jnp.asarray(refs)), kernel=similarity.top_k_kernel,
      options=similarity.static_options(k=5, chunk_size=CHUNK, ref_chunk_size=None,
                                        metric="cosine")).as_text()
  assert f"{CHUNK}x{R}xf32" in hlo  # one chunk against all references
  assert f"{Q}x{R}x" not in hlo and f"40x{R}x" not in hlo  # never all (padded) queries


def test_stream_queries_drops_padding_and_sees_every_row():
  x = jnp.arange(22 * 3, dtype=jnp.float32).reshape(22, 3)

  def step(total, chunk, rows):
    valid = rows < 22
    return total + jnp.sum(jnp.where(valid[:, None], chunk, 0)), chunk.sum(1)

  total, per_row = similarity.stream_queries(x, 5, jnp.float32(0), step)
  assert float(total) == float(x.sum())
  np.testing.assert_array_equal(per_row, x.sum(1))


@pytest.mark.parametrize("call, message", [
    (lambda q, r, i: kernels.top_k(q[:0], r, 2), "queries is empty"),
    (lambda q, r, i: kernels.top_k(q, r[:, :8], 2), "dimension"),
    (lambda q, r, i: kernels.top_k(q, r, R + 1), "k must be"),
    (lambda q, r, i: kernels.top_k(q, r, 0), "k must be"),
    (lambda q, r, i: kernels.top_k(q, r.at[3, 2].set(jnp.nan), 2), "refs contain NaN"),
    (lambda q, r, i: kernels.top_k(2 * q, r, 2), "unit-norm"),
    (lambda q, r, i: kernels.top_k(q, r, 2, metric="dot"), "metric must be"),
    (lambda q, r, i: kernels.top_k(q.astype(jnp.int32), r, 2), "float32 or bfloat16"),
    (lambda q, r, i: kernels.top_k(q, r.astype(jnp.bfloat16), 2), "share a dtype"),
    (lambda q, r, i: kernels.top_k(q[0], r, 2), "2-D"),
    (lambda q, r, i: kernels.top_k(q, r, 2, chunk_size=0), "chunk_size"),
    (lambda q, r, i: kernels.best_match_per_identity(q, r, i[:-1], NUM_IDENTITIES), "ref_identity"),
    (lambda q, r, i: kernels.best_match_per_identity(q, r, i, 3), r"\[0, 3\)"),
    (lambda q, r, i: kernels.top_k_per_identity(q, r, i, NUM_IDENTITIES, Q + 1), "k must be"),
    (lambda q, r, i: kernels.top_k_identities(q, r, i, NUM_IDENTITIES, 9), "k must be"),
    (lambda q, r, i: kernels.count_above(q, r, i, NUM_IDENTITIES, float("nan")), "threshold"),
])
def test_clear_errors(data, call, message):
  queries, refs, ref_identity = data
  with pytest.raises(ValueError, match=message):
    call(jnp.asarray(queries), jnp.asarray(refs), jnp.asarray(ref_identity))


def test_kernels_trace_inside_a_users_jit(data):
  queries, refs, _ = data
  values, index = jax.jit(lambda q, r: kernels.top_k(q, r, 3, chunk_size=CHUNK))(queries, refs)
  np.testing.assert_array_equal(index, brute_top_k(queries, refs, 3)[1])
