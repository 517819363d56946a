"""Checks of the inputs of the similarity kernels: shapes, dtypes, identities, k and chunk sizes,
NaN and unit norms, each failing with a one-line ValueError that says what is wrong."""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Metric = Literal["cosine", "sqeuclidean"]
METRICS = ("cosine", "sqeuclidean")
# Unit-norm tolerance for the cosine metric: bfloat16 rounding moves ||x||^2 by up to about 1e-2.
_UNIT_NORM_TOLERANCE = 2e-2


def sqnorms(x: jax.Array) -> jax.Array:
  """f32[N]: squared L2 norms of the rows, accumulated in float32."""
  return jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def check_embeddings(queries, refs, metric: str) -> None:
  """Raises ValueError for empty sets, wrong ranks or dtypes, mismatched D, NaN, non-unit cosine."""
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
  for name, x in (("queries", queries), ("refs", refs)):
    if np.ndim(x) != 2:
      raise ValueError(f"{name} must be a 2-D array [N, D] of embeddings, got shape {np.shape(x)}")
    if x.shape[0] == 0:
      raise ValueError(f"{name} is empty: need at least one embedding")
    if jnp.dtype(x.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
      raise ValueError(f"{name} must be float32 or bfloat16, got {x.dtype}")
  if queries.shape[1] != refs.shape[1]:
    raise ValueError(f"queries have dimension {queries.shape[1]} but refs have {refs.shape[1]}")
  if queries.dtype != refs.dtype:
    raise ValueError(f"queries ({queries.dtype}) and refs ({refs.dtype}) must share a dtype")
  for name, x in (("queries", queries), ("refs", refs)):
    if not _is_concrete(x):
      continue
    norms = sqnorms(jnp.asarray(x))
    if bool(jnp.any(jnp.isnan(norms))):
      raise ValueError(f"{name} contain NaN (first bad row {int(jnp.argmax(jnp.isnan(norms)))})")
    if metric == "cosine":
      error = jnp.abs(norms - 1.0)
      if bool(jnp.any(error > _UNIT_NORM_TOLERANCE)):
        row = int(jnp.argmax(error))
        raise ValueError(f"metric 'cosine' needs unit-norm embeddings: {name} row {row} has norm "
                         f"{float(jnp.sqrt(norms[row])):.4g}; normalise them first")


def check_identities(ref_identity, num_refs: int, num_identities: int) -> None:
  """Raises ValueError unless ref_identity is int[R] with values in [0, num_identities)."""
  if not isinstance(num_identities, (int, np.integer)) or num_identities < 1:
    raise ValueError(f"num_identities must be a positive int, got {num_identities!r}")
  if np.shape(ref_identity) != (num_refs,):
    raise ValueError(f"ref_identity must have shape ({num_refs},) like refs' rows, "
                     f"got {np.shape(ref_identity)}")
  if not jnp.issubdtype(ref_identity.dtype, jnp.integer):
    raise ValueError(f"ref_identity must be integers, got {ref_identity.dtype}")
  if _is_concrete(ref_identity):
    low, high = int(jnp.min(ref_identity)), int(jnp.max(ref_identity))
    if low < 0 or high >= num_identities:
      raise ValueError(f"ref_identity values must lie in [0, {num_identities}), "
                       f"got [{low}, {high}]")


def _check_k(k, available: int, what: str) -> None:
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
    raise ValueError(f"k must be an int in [1, {available}] (the number of {what}), got {k!r}")


def _check_chunk_size(name: str, size) -> None:
  if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
    raise ValueError(f"{name} must be a positive int, got {size!r}")


def check_inputs(queries, refs, *, metric: str, chunk_size: int, ref_chunk_size: int | None = None,
                 ref_identity=None, num_identities: int | None = None, k: int | None = None,
                 k_counts: Literal["references", "queries", "identities"] | None = None):
  """Validates a kernel call; returns (queries, refs, ref_identity int32 or None) as jax arrays.

  `k_counts` names what `k` selects among, which bounds it.
  """
  queries, refs = _as_array(queries), _as_array(refs)
  check_embeddings(queries, refs, metric)
  _check_chunk_size("chunk_size", chunk_size)
  _check_chunk_size("ref_chunk_size", ref_chunk_size)
  if ref_identity is not None:
    ref_identity = _as_array(ref_identity)
    check_identities(ref_identity, refs.shape[0], num_identities)
    ref_identity = ref_identity.astype(jnp.int32)
  if k_counts is not None:
    available = {"references": refs.shape[0], "queries": queries.shape[0],
                 "identities": num_identities}[k_counts]
    _check_k(k, available, k_counts)
  return queries, refs, ref_identity


def check_threshold(threshold) -> jax.Array:
  if np.ndim(threshold) != 0 or not np.isfinite(float(threshold)):
    raise ValueError(f"threshold must be a finite scalar, got {threshold!r}")
  return jnp.float32(threshold)


def _as_array(x) -> jax.Array:
  return x if isinstance(x, jax.Array) else jnp.asarray(x)
