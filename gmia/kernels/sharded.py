"""The similarity kernels over a `jax.sharding.Mesh`, on one host or many.

Queries are split over the mesh's `data` axis (gmia.parallel.DATA_AXIS). References are either
replicated (`ref_axis=None`) or split over a second mesh axis (`ref_axis="refs"`) when the
reference set is too large for one device; the kernels then combine across that axis themselves
(top-k: an all_gather of every device's candidates with global indices, then top-k again;
per-identity maxima: pmax). Sizes that do not divide the device counts are padded here, and the
padding never matches.

Inputs are global `jax.Array`s (e.g. from `gmia.parallel.shard_batch`) or host arrays; results
are global `jax.Array`s, per-identity ones replicated. Indices are global: into all queries and
all references.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from gmia.kernels import checks, similarity as sim
from gmia.parallel import DATA_AXIS

REFS_AXIS = "refs"


def make_search_mesh(data: int, refs: int = 1) -> Mesh:
  """A (data, refs) mesh over the first data * refs devices of jax.devices()."""
  devices = jax.devices()
  if data < 1 or refs < 1 or data * refs > len(devices):
    raise ValueError(f"a {data} x {refs} mesh needs {data * refs} devices, {len(devices)} visible")
  return Mesh(np.asarray(devices[:data * refs]).reshape(data, refs), (DATA_AXIS, REFS_AXIS))


def _check_mesh(mesh: Mesh, ref_axis: str | None) -> None:
  if DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"the mesh needs a {DATA_AXIS!r} axis, it has {mesh.axis_names}")
  if ref_axis is not None and ref_axis not in mesh.axis_names:
    raise ValueError(f"ref_axis {ref_axis!r} is not an axis of the mesh {mesh.axis_names}")
  if ref_axis == DATA_AXIS:
    raise ValueError(f"ref_axis must differ from the {DATA_AXIS!r} axis that splits the queries")


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
  pad = -x.shape[0] % multiple
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))


@functools.partial(jax.jit, static_argnames=("kernel", "mesh", "ref_axis", "per_query", "options"))
def _run_sharded(queries, refs, ref_args, shared_args, *, kernel, mesh, ref_axis, per_query,
                 options):
  """Pads, runs `kernel` under shard_map with a Layout of global offsets, drops the padding.

  ref_args are split like the references, shared_args replicated; per_query says whether the
  outputs have a leading query axis (split over data) or are per identity (replicated).
  """
  num_queries, num_refs = queries.shape[0], refs.shape[0]
  ref_devices = 1 if ref_axis is None else mesh.shape[ref_axis]
  queries = _pad_rows(queries, mesh.shape[DATA_AXIS])
  refs, *ref_args = (_pad_rows(x, ref_devices) for x in (refs, *ref_args))
  refs_padded = refs.shape[0] > num_refs

  def local(local_queries, local_refs, *args):
    layout = sim.Layout(
        num_queries=num_queries, num_refs=num_refs,
        query_offset=lax.axis_index(DATA_AXIS) * local_queries.shape[0],
        ref_offset=0 if ref_axis is None else lax.axis_index(ref_axis) * local_refs.shape[0],
        data_axis=DATA_AXIS, ref_axis=ref_axis, refs_padded=refs_padded)
    return kernel(local_queries, local_refs, *args, layout=layout, **dict(options))

  in_specs = (P(DATA_AXIS), P(ref_axis), *(P(ref_axis),) * len(ref_args),
              *(P(),) * len(shared_args))
  outputs = jax.shard_map(local, mesh=mesh, in_specs=in_specs,
                          out_specs=P(DATA_AXIS) if per_query else P())(
                              queries, refs, *ref_args, *shared_args)
  if per_query:
    outputs = jax.tree.map(lambda x: x[:num_queries], outputs)
  return sim.finish(outputs, dict(options)["metric"])


def top_k(queries: jax.Array, refs: jax.Array, k: int, *, mesh: Mesh, ref_axis: str | None = None,
          chunk_size: int = sim.DEFAULT_CHUNK_SIZE, ref_chunk_size: int | None = None,
          metric: sim.Metric = "cosine") -> tuple[jax.Array, jax.Array]:
  """`similarity.top_k` with queries split over `data` and refs replicated or split on ref_axis.

  chunk_size and ref_chunk_size apply per device. Returns (values f32[Q,k], indices int32[Q,k])
  with global reference indices.
  """
  _check_mesh(mesh, ref_axis)
  queries, refs, _ = checks.check_inputs(queries, refs, metric=metric, chunk_size=chunk_size,
                                         ref_chunk_size=ref_chunk_size, k=k, k_counts="references")
  return _run_sharded(queries, refs, (), (), kernel=sim.top_k_kernel, mesh=mesh,
                      ref_axis=ref_axis, per_query=True, options=sim.static_options(
                          k=k, chunk_size=chunk_size, ref_chunk_size=ref_chunk_size,
                          metric=metric))


def best_match_per_identity(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                            num_identities: int, *, mesh: Mesh, ref_axis: str | None = None,
                            chunk_size: int = sim.DEFAULT_CHUNK_SIZE,
                            metric: sim.Metric = "cosine"
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`similarity.best_match_per_identity` over a mesh; the same ties rule, replicated results."""
  return _per_identity(queries, refs, ref_identity, num_identities, mesh=mesh, ref_axis=ref_axis,
                       chunk_size=chunk_size, metric=metric, kernel=sim.best_match_kernel,
                       per_query=False)


def top_k_per_identity(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                       num_identities: int, k: int, *, mesh: Mesh, ref_axis: str | None = None,
                       chunk_size: int = sim.DEFAULT_CHUNK_SIZE,
                       metric: sim.Metric = "cosine") -> tuple[jax.Array, jax.Array]:
  """`similarity.top_k_per_identity` over a mesh; replicated results with global query indices."""
  return _per_identity(queries, refs, ref_identity, num_identities, mesh=mesh, ref_axis=ref_axis,
                       chunk_size=chunk_size, metric=metric, kernel=sim.top_k_per_identity_kernel,
                       per_query=False, k=k, k_counts="queries")


def count_above(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                num_identities: int, threshold: float, *, mesh: Mesh, ref_axis: str | None = None,
                chunk_size: int = sim.DEFAULT_CHUNK_SIZE,
                metric: sim.Metric = "cosine") -> jax.Array:
  """`similarity.count_above` over a mesh; replicated int32[I]."""
  return _per_identity(queries, refs, ref_identity, num_identities, mesh=mesh, ref_axis=ref_axis,
                       chunk_size=chunk_size, metric=metric, kernel=sim.count_above_kernel,
                       per_query=False, shared=(checks.check_threshold(threshold),))


def top_k_identities(queries: jax.Array, refs: jax.Array, ref_identity: jax.Array,
                     num_identities: int, k: int, *, mesh: Mesh, ref_axis: str | None = None,
                     chunk_size: int = sim.DEFAULT_CHUNK_SIZE,
                     metric: sim.Metric = "cosine") -> tuple[jax.Array, jax.Array]:
  """`similarity.top_k_identities` over a mesh."""
  return _per_identity(queries, refs, ref_identity, num_identities, mesh=mesh, ref_axis=ref_axis,
                       chunk_size=chunk_size, metric=metric, kernel=sim.top_k_identities_kernel,
                       per_query=True, k=k, k_counts="identities")


def _per_identity(queries, refs, ref_identity, num_identities, *, mesh, ref_axis, chunk_size,
                  metric, kernel, per_query, k=None, k_counts=None, shared=()):
  """A kernel over labelled references on the mesh: per identity (per_query False) or per
  sample (per_query True); `shared` are replicated extra inputs (a threshold)."""
  _check_mesh(mesh, ref_axis)
  queries, refs, ref_identity = checks.check_inputs(queries, refs, metric=metric,
                                                    chunk_size=chunk_size,
                                                    ref_identity=ref_identity,
                                                    num_identities=num_identities, k=k,
                                                    k_counts=k_counts)
  options = {"num_identities": num_identities, "chunk_size": chunk_size, "metric": metric}
  if k is not None:
    options["k"] = k
  return _run_sharded(queries, refs, (ref_identity,), shared, kernel=kernel, mesh=mesh,
                      ref_axis=ref_axis, per_query=per_query,
                      options=sim.static_options(**options))
