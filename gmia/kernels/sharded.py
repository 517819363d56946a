"""Running the similarity kernels over a `jax.sharding.Mesh`, on one host or many
(gmia.kernels.search calls this with `mesh=`).

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

from gmia.kernels import similarity as sim
from gmia.parallel import DATA_AXIS

REFS_AXIS = "refs"


def make_search_mesh(data: int, refs: int = 1) -> Mesh:
  """A (data, refs) mesh over the first data * refs devices of jax.devices()."""
  devices = jax.devices()
  if data < 1 or refs < 1 or data * refs > len(devices):
    raise ValueError(f"a {data} x {refs} mesh needs {data * refs} devices, {len(devices)} visible")
  return Mesh(np.asarray(devices[:data * refs]).reshape(data, refs), (DATA_AXIS, REFS_AXIS))


def check_mesh(mesh: Mesh, ref_axis: str | None) -> None:
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
def run_sharded(queries, refs, ref_args, shared_args, *, kernel, mesh, ref_axis, per_query,
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
