"""Similarity search, the public entry points: top-k and per-identity matches of queries (generated
samples) against references (photos), on one device or over a mesh.

Every function runs the same kernel (gmia.kernels.similarity) either whole on the default device
(`mesh=None`) or under `jax.shard_map` (gmia.kernels.sharded): queries split over the mesh's
`data` axis, references replicated (`ref_axis=None`) or split over a second axis when the
reference set is too large for one device. Inputs are checked first (gmia.kernels.checks); on a
mesh, results per identity are replicated and indices are global.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from gmia.kernels import sharded
from gmia.kernels.checks import Metric, check_inputs, check_threshold
from gmia.kernels.similarity import (DEFAULT_CHUNK_SIZE, run_whole, best_match_kernel,
                                     count_above_kernel, static_options, top_k_identities_kernel,
                                     top_k_kernel, top_k_per_identity_kernel)


def _run(kernel, queries, refs, ref_args: tuple, shared_args: tuple, *, options: dict,
         mesh: Mesh | None, ref_axis: str | None, per_query: bool):
  """`kernel` on the whole arrays, or over `mesh` (see the module docstring)."""
  options = static_options(**options)
  if mesh is None:
    if ref_axis is not None:
      raise ValueError(f"ref_axis={ref_axis!r} splits references over a mesh: give the mesh")
    return run_whole((queries, refs, *ref_args, *shared_args), kernel=kernel, options=options)
  sharded.check_mesh(mesh, ref_axis)
  return sharded.run_sharded(queries, refs, ref_args, shared_args, kernel=kernel, mesh=mesh,
                             ref_axis=ref_axis, per_query=per_query, options=options)


def top_k(queries: jax.Array, refs: jax.Array, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
          ref_chunk_size: int | None = None, metric: Metric = "cosine", mesh: Mesh | None = None,
          ref_axis: str | None = None) -> tuple[jax.Array, jax.Array]:
  """The `k` references nearest to each query.

  queries: f32|bf16[Q,D], refs: f32|bf16[R,D] (unit-norm for "cosine").
  chunk_size: queries per scan step; ref_chunk_size: references per inner scan step with a
  running top-k merge (None: all references at once), per device on a mesh. Memory
  O(chunk_size x ref block).
  Returns (values f32[Q,k], indices int32[Q,k]): cosine similarities in descending order or
  squared distances in ascending order; ties go to the smaller reference index.
  """
  queries, refs, _ = check_inputs(queries, refs, metric=metric, chunk_size=chunk_size,
                                  ref_chunk_size=ref_chunk_size, k=k, k_counts="references")
  return _run(top_k_kernel, queries, refs, (), (), options=dict(
      k=k, chunk_size=chunk_size, ref_chunk_size=ref_chunk_size, metric=metric), mesh=mesh,
              ref_axis=ref_axis, per_query=True)


def _per_identity(kernel, queries, refs, ref_identity, num_identities: int, *, chunk_size: int,
                  metric: Metric, mesh: Mesh | None, ref_axis: str | None, per_query: bool,
                  k: int | None = None, k_counts: str | None = None,
                  threshold: float | None = None):
  """Checks a per-identity call's inputs and runs `kernel`."""
  queries, refs, ref_identity = check_inputs(queries, refs, metric=metric, chunk_size=chunk_size,
                                             ref_identity=ref_identity,
                                             num_identities=num_identities, k=k,
                                             k_counts=k_counts)
  options = {"num_identities": num_identities, "chunk_size": chunk_size, "metric": metric}
  if k is not None:
    options["k"] = k
  shared = () if threshold is None else (check_threshold(threshold),)
  return _run(kernel, queries, refs, (ref_identity,), shared, options=options, mesh=mesh,
              ref_axis=ref_axis, per_query=per_query)


def best_match_per_identity(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                            num_identities: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                            metric: Metric = "cosine", mesh: Mesh | None = None,
                            ref_axis: str | None = None
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """For every reference identity, its nearest (sample, photo) pair.

  queries: f32|bf16[Q,D] samples; refs: f32|bf16[R,D] photos; ref_identity: int[R] in
  [0, num_identities). Returns (best f32[I], best_query int32[I], best_ref int32[I]); an identity
  without photos gets -inf similarity (+inf distance) and index -1. Ties go to the smallest query,
  then the smallest reference index.
  """
  return _per_identity(best_match_kernel, queries, refs, ref_identity, num_identities,
                       chunk_size=chunk_size, metric=metric, mesh=mesh, ref_axis=ref_axis,
                       per_query=False)


def top_k_per_identity(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                       num_identities: int, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       metric: Metric = "cosine", mesh: Mesh | None = None,
                       ref_axis: str | None = None) -> tuple[jax.Array, jax.Array]:
  """For every identity, the `k` samples nearest to any of its photos.

  A sample's similarity to an identity is its similarity to that identity's nearest photo.
  Returns (values f32[I,k], query int32[I,k]) in rank order (the "mean of top-k" score averages
  values over k); identities without photos get -inf (+inf distance) and index -1.
  """
  return _per_identity(top_k_per_identity_kernel, queries, refs, ref_identity, num_identities,
                       chunk_size=chunk_size, metric=metric, mesh=mesh, ref_axis=ref_axis,
                       per_query=False, k=k, k_counts="queries")


def count_above(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                num_identities: int, threshold: float, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                metric: Metric = "cosine", mesh: Mesh | None = None,
                ref_axis: str | None = None) -> jax.Array:
  """int32[I]: per identity, the samples that match one of its photos beyond `threshold`.

  "Match beyond" means cosine similarity > threshold, or squared distance < threshold: the number
  of samples a verifier at that threshold would accept as the person. `threshold` is traced, so
  sweeping it does not recompile.
  """
  return _per_identity(count_above_kernel, queries, refs, ref_identity, num_identities,
                       chunk_size=chunk_size, metric=metric, mesh=mesh, ref_axis=ref_axis,
                       per_query=False, threshold=threshold)


def top_k_identities(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                     num_identities: int, k: int, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                     metric: Metric = "cosine", mesh: Mesh | None = None,
                     ref_axis: str | None = None) -> tuple[jax.Array, jax.Array]:
  """For every sample, the `k` nearest identities (each by its nearest photo).

  The "this person probably exists" view. Returns (values f32[Q,k], identity int32[Q,k]); ties go
  to the smaller identity, and identities without photos rank last with -inf (+inf distance).
  """
  return _per_identity(top_k_identities_kernel, queries, refs, ref_identity, num_identities,
                       chunk_size=chunk_size, metric=metric, mesh=mesh, ref_axis=ref_axis,
                       per_query=True, k=k, k_counts="identities")
