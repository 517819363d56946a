"""Identity distances between embeddings, streamed so that no queries x references matrix exists.

Queries (generated samples) pass through `jax.lax.scan` in chunks; each chunk meets the references
in one matmul, f32[chunk, R], and is reduced at once, so memory is O(chunk x R). `top_k` can also
scan over blocks of references with a running top-k merge, which bounds memory by O(chunk x block)
when the reference set is huge.

Metrics: "cosine" (the dot product of unit-norm embeddings) and "sqeuclidean" (squared L2,
||q||^2 + ||r||^2 - 2 q.r, which is 2 - 2 cos for unit vectors). Internally every kernel ranks by
*closeness* (cosine, or minus the squared distance) so that larger is always nearer; results are
given back in the metric's own units: similarities in descending order, distances in ascending
order.

Inputs may be float32 or bfloat16; products always accumulate in float32.

Every kernel is written once for any layout: `Layout` says where a call's queries and references
sit in the global arrays and over which mesh axes they are split, and the kernel combines across
those axes itself (gmia.kernels.search runs them whole or under `jax.shard_map`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gmia.kernels.checks import Metric, sqnorms

# Queries per scan step. 512 x 20,000 f32 scores is 40 MB: big enough to keep the matmul efficient,
# small enough for any accelerator (bench/bench_topk.py measures the choice).
DEFAULT_CHUNK_SIZE = 512
_NO_INDEX = -1
# Exact top-k of long rows selects groups of this many entries first (see _top_k_candidates),
# for rows of at least _GROUPED_TOP_K_MIN_WIDTH * k entries.
_TOP_K_GROUP = 16
_GROUPED_TOP_K_MIN_WIDTH = 8 * _TOP_K_GROUP


class Layout(NamedTuple):
  """Where the queries and references of one call sit in the global arrays.

  num_queries / num_refs: global counts; rows at or past them are padding and never match.
  query_offset / ref_offset: global index of this call's first row (traced inside shard_map).
  data_axis / ref_axis: mesh axes the queries / references are split over, or None.
  refs_padded: whether any local reference is padding; if not, no reference is ever masked.
  """
  num_queries: Any
  num_refs: Any
  query_offset: Any = 0
  ref_offset: Any = 0
  data_axis: str | None = None
  ref_axis: str | None = None
  refs_padded: bool = False

  @classmethod
  def whole(cls, queries: jax.Array, refs: jax.Array) -> "Layout":
    """Everything on one device: global and local arrays coincide."""
    return cls(num_queries=queries.shape[0], num_refs=refs.shape[0])

  def varying(self, tree: Any, *, over_refs: bool) -> Any:
    """Marks a scan's initial carry as differing across the devices its updates differ across.

    Inside shard_map a carry fed by local queries varies over the data axis, and over the
    reference axis too unless it was already reduced across it (`over_refs=False`).
    """
    axes = tuple(a for a in (self.data_axis, self.ref_axis if over_refs else None) if a is not None)
    return jax.tree.map(lambda x: lax.pcast(x, axes, to="varying"), tree) if axes else tree


# ------------------------------------------------------------------------------------------------
# The one loop and the building blocks every kernel shares.


StepFn = Callable[[Any, jax.Array, jax.Array], tuple[Any, Any]]


def stream_queries(queries: jax.Array, chunk_size: int, init: Any,
                   step_fn: StepFn) -> tuple[Any, Any]:
  """Scans the rows of `queries` f[Q,D] in chunks of at most `chunk_size`.

  `step_fn(carry, chunk f[C,D], rows int32[C]) -> (carry, per_row)` sees the local row indices of
  its chunk; rows >= Q are padding added to fill the last chunk. Returns the final carry and the
  per-row outputs stacked to a leading Q with the padding dropped (None if the step emits none).
  The chunk is chosen to divide Q as evenly as possible, so padding is under one row per chunk.
  """
  num_queries, dim = queries.shape
  num_chunks = -(-num_queries // max(1, min(chunk_size, num_queries)))
  chunk = -(-num_queries // num_chunks)
  padded = jnp.pad(queries, ((0, num_chunks * chunk - num_queries), (0, 0)))
  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk

  def body(carry, xs):
    chunk_queries, start = xs
    return step_fn(carry, chunk_queries, start + jnp.arange(chunk, dtype=jnp.int32))

  carry, per_row = lax.scan(body, init, (padded.reshape(num_chunks, chunk, dim), starts))
  per_row = jax.tree.map(lambda x: x.reshape(num_chunks * chunk, *x.shape[2:])[:num_queries],
                         per_row)
  return carry, per_row


def _precision(dtype) -> lax.Precision:
  # float32 inputs get full float32 products on every backend (GPUs and TPUs otherwise round to
  # tf32 / bf16 passes); bfloat16 inputs are already rounded.
  return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def _closeness(queries: jax.Array, refs: jax.Array, ref_sqnorms: jax.Array | None,
               metric: Metric) -> jax.Array:
  """f32[C,R], larger is nearer: cosine similarity, or minus the squared L2 distance."""
  dots = lax.dot_general(queries, refs, (((1,), (1,)), ((), ())),
                         precision=_precision(queries.dtype), preferred_element_type=jnp.float32)
  if metric == "cosine":
    return dots
  return 2.0 * dots - sqnorms(queries)[:, None] - ref_sqnorms[None, :]


def from_closeness(closeness: jax.Array, metric: Metric) -> jax.Array:
  """Closeness back to the metric's units (distances clipped at 0 against rounding)."""
  return closeness if metric == "cosine" else jnp.maximum(-closeness, 0.0)


def _to_closeness(value: jax.Array, metric: Metric) -> jax.Array:
  return value if metric == "cosine" else -value


def _ref_sqnorms(refs: jax.Array, metric: Metric) -> jax.Array | None:
  return sqnorms(refs) if metric == "sqeuclidean" else None


def _valid_queries(rows: jax.Array, layout: Layout) -> jax.Array:
  return layout.query_offset + rows < layout.num_queries


def _global_refs(num_local: int, layout: Layout) -> tuple[jax.Array, jax.Array | None]:
  """Global indices int32[R_local] of this call's references and whether each is real (None:
  all are). Knowing there is no padding saves masking, and so copying, the scores."""
  index = layout.ref_offset + jnp.arange(num_local, dtype=jnp.int32)
  return index, (index < layout.num_refs) if layout.refs_padded else None


def _masked(values: jax.Array, valid: jax.Array | None) -> jax.Array:
  """values with -inf where valid (broadcastable) is False; valid None means all valid."""
  return values if valid is None else jnp.where(valid, values, -jnp.inf)


def _merge_top_k(values: jax.Array, indices: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Top k along the last axis of candidate values, carrying their indices.

  lax.top_k puts the lower position first among equal values, so candidates laid out in global
  index order resolve ties to the smallest index, like a stable sort.
  """
  top_values, position = lax.top_k(values, k)
  return top_values, jnp.take_along_axis(indices, position, axis=-1)


def _top_k_candidates(values: jax.Array, index: jax.Array, valid: jax.Array | None,
                      k: int) -> tuple[jax.Array, jax.Array]:
  """A subset of values [..., M] (with their indices, index int32[M]) sure to hold the top k.

  Entries where valid bool[M] is False count as -inf (None: all valid). Long rows are cut into
  groups of _TOP_K_GROUP consecutive entries; only the k groups with the highest maxima can hold
  the top k (an entry of any other group is matched by k group maxima). So one top_k over the
  M / group maxima and a gather of k groups replace a top_k over all M entries: on CPUs top_k is
  a serial partial sort, the group maxima a cheap parallel reduction. The mask is applied only
  inside that reduction and to the gathered candidates, so the [..., M] values are read once
  and never copied. Candidates keep index order (the last M % group entries join them as they
  are), so ties still resolve to the smallest index.
  """
  batch, width = values.shape[:-1], values.shape[-1]
  if width < _GROUPED_TOP_K_MIN_WIDTH * k:
    return _masked(values, valid), jnp.broadcast_to(index, values.shape)
  grouped_width = width - width % _TOP_K_GROUP
  group = lambda x: x[..., :grouped_width].reshape(*x.shape[:-1], -1, _TOP_K_GROUP)
  head = group(values)
  head_valid = None if valid is None else group(valid)
  _, groups = lax.top_k(jnp.max(_masked(head, head_valid), axis=-1), k)
  groups = jnp.sort(groups, axis=-1)
  pick = lambda x: x[groups].reshape(*batch, k * _TOP_K_GROUP)
  candidates = jnp.take_along_axis(head, groups[..., None], axis=-2).reshape(*batch, -1)
  candidates = _masked(candidates, None if valid is None else pick(head_valid))
  tail = values[..., grouped_width:]
  tail_valid = None if valid is None else valid[grouped_width:]
  return (jnp.concatenate([candidates, _masked(tail, tail_valid)], axis=-1),
          jnp.concatenate([pick(group(index)),
                           jnp.broadcast_to(index[grouped_width:], tail.shape)], axis=-1))


def _update_top_k(best: tuple[jax.Array, jax.Array], values: jax.Array, index: jax.Array,
                  valid: jax.Array | None, k: int) -> tuple[jax.Array, jax.Array]:
  """Running top k (values [..., k], indices [..., k]) updated with new values [..., M] whose
  indices index int32[M] all exceed those already seen (so ties keep the earlier entries);
  entries where valid bool[M] is False never enter."""
  candidates, indices = _top_k_candidates(values, index, valid, k)
  return _merge_top_k(jnp.concatenate([best[0], candidates], axis=-1),
                      jnp.concatenate([best[1], indices], axis=-1), k)


def _empty_top_k(shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  return jnp.full(shape, -jnp.inf, jnp.float32), jnp.full(shape, _NO_INDEX, jnp.int32)


def _identity_closeness(chunk: jax.Array, refs: jax.Array, ref_sqnorms: jax.Array | None,
                        ref_identity: jax.Array, num_identities: int, metric: Metric,
                        layout: Layout) -> jax.Array:
  """f32[I,C]: each sample's closeness to each identity's nearest photo (-inf without photos)."""
  _, real = _global_refs(refs.shape[0], layout)
  closeness = _masked(_closeness(chunk, refs, ref_sqnorms, metric), real)
  per_identity = jax.ops.segment_max(closeness.T, ref_identity, num_segments=num_identities)
  if layout.ref_axis is not None:
    per_identity = lax.pmax(per_identity, layout.ref_axis)
  return per_identity


# ------------------------------------------------------------------------------------------------
# Kernels: pure functions of local arrays and a Layout (jit them with static ints and metric).


def top_k_kernel(queries, refs, *, k: int, chunk_size: int, ref_chunk_size: int | None,
                 metric: Metric, layout: Layout) -> tuple[jax.Array, jax.Array]:
  """Nearest `k` references per query: (closeness f32[Q,k], global ref index int32[Q,k]).

  Each query chunk scans the references in blocks of ref_chunk_size (a shorter last block
  rather than padding), keeping a running top k.
  """
  num_refs, dim = refs.shape
  block = num_refs if ref_chunk_size is None else min(ref_chunk_size, num_refs)
  num_blocks = num_refs // block
  ref_index, real = _global_refs(num_refs, layout)
  sqnorms = _ref_sqnorms(refs, metric)

  def blocks(x, start, stop):
    return None if x is None else x[start:stop].reshape(-1, block, *x.shape[1:])

  def update(best, chunk, xs):
    block_refs, block_index, block_real, block_sqnorms = xs
    closeness = _closeness(chunk, block_refs, block_sqnorms, metric)
    return _update_top_k(best, closeness, block_index, block_real, k)

  per_ref = (refs, ref_index, real, sqnorms)
  whole_blocks = [blocks(x, 0, num_blocks * block) for x in per_ref]
  last_block = [None if x is None else x[num_blocks * block:] for x in per_ref]

  def step(carry, chunk, rows):
    best = layout.varying(_empty_top_k((rows.shape[0], k)), over_refs=True)
    best, _ = lax.scan(lambda best, xs: (update(best, chunk, xs), None), best, whole_blocks)
    if num_blocks * block < num_refs:
      best = update(best, chunk, last_block)
    return carry, best

  _, (closeness, index) = stream_queries(queries, chunk_size, None, step)
  if layout.ref_axis is not None:
    closeness, index = _merge_across(closeness, index, k, layout.ref_axis)
  return closeness, index


def _gather_same_everywhere(x: jax.Array, axis_name: str) -> jax.Array:
  """All devices' x along `axis_name`, stacked in device order: [devices, *x.shape].

  A psum of one filled slot per device: an all_gather whose result shard_map knows to be
  identical on every device, so it can leave the map replicated.
  """
  slots = jnp.zeros((lax.axis_size(axis_name),) + x.shape, x.dtype)
  return lax.psum(slots.at[lax.axis_index(axis_name)].set(x), axis_name)


def _merge_across(values, indices, k, axis_name):
  """Top k of the candidates [..., k] of all devices along `axis_name`, in device order."""
  def gather(x):
    stacked = _gather_same_everywhere(x, axis_name)
    return jnp.moveaxis(stacked, 0, -2).reshape(*x.shape[:-1], -1)
  return _merge_top_k(gather(values), gather(indices), k)


def best_match_kernel(queries, refs, ref_identity, *, num_identities: int, chunk_size: int,
                      metric: Metric, layout: Layout) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Closest (sample, photo) pair per identity: (closeness f32[I], query int32[I], ref int32[I]).

  A running maximum per reference photo over query chunks, then one segment maximum over each
  identity's photos. Ties go to the smallest query index, then the smallest reference index.
  """
  ref_sqnorms = _ref_sqnorms(refs, metric)
  _, real = _global_refs(refs.shape[0], layout)

  def step(best, chunk, rows):
    closeness = _closeness(chunk, refs, ref_sqnorms, metric)
    closeness = jnp.where(_valid_queries(rows, layout)[:, None], closeness, -jnp.inf)
    chunk_best = jnp.max(closeness, axis=0)
    chunk_query = layout.query_offset + rows[jnp.argmax(closeness, axis=0)]
    better = chunk_best > best[0]  # strict: earlier chunks (smaller indices) keep ties
    return (jnp.where(better, chunk_best, best[0]), jnp.where(better, chunk_query, best[1])), None

  init = layout.varying(_empty_top_k(refs.shape[:1]), over_refs=True)
  (per_ref, per_ref_query), _ = stream_queries(queries, chunk_size, init, step)
  per_ref = _masked(per_ref, real)
  if layout.data_axis is not None:
    per_ref, per_ref_query = _argmax_across(per_ref, per_ref_query, layout.data_axis)
  if layout.ref_axis is not None:
    per_ref, per_ref_query, ref_identity = (
        _gather_same_everywhere(x, layout.ref_axis).reshape(-1)
        for x in (per_ref, per_ref_query, ref_identity))
  return _best_per_identity(per_ref, per_ref_query, ref_identity, num_identities)


def _argmax_across(best, index, axis_name):
  """Elementwise maximum over devices; among equal maxima the smallest index wins."""
  overall = lax.pmax(best, axis_name)
  candidate = jnp.where(best == overall, index, jnp.iinfo(jnp.int32).max)
  return overall, lax.pmin(candidate, axis_name)


def _best_per_identity(per_ref, per_ref_query, ref_identity, num_identities):
  """Segment argmax over global reference positions (padding holds -inf and never wins).

  Among an identity's photos at its maximum, the smallest query index wins, then the smallest
  reference index: the first maximum of the identity's queries x photos block in row-major order.
  """
  never = jnp.iinfo(jnp.int32).max
  segment_min = functools.partial(jax.ops.segment_min, segment_ids=ref_identity,
                                  num_segments=num_identities)
  best = jax.ops.segment_max(per_ref, ref_identity, num_segments=num_identities)
  at_best = (per_ref == best[ref_identity]) & jnp.isfinite(per_ref)
  best_query = segment_min(jnp.where(at_best, per_ref_query, never))
  at_best &= per_ref_query == best_query[ref_identity]
  best_ref = segment_min(jnp.where(at_best, jnp.arange(per_ref.shape[0], dtype=jnp.int32), never))
  found = best_ref < never
  return best, jnp.where(found, best_query, _NO_INDEX), jnp.where(found, best_ref, _NO_INDEX)


def top_k_per_identity_kernel(queries, refs, ref_identity, *, num_identities: int, k: int,
                              chunk_size: int, metric: Metric,
                              layout: Layout) -> tuple[jax.Array, jax.Array]:
  """The k samples nearest to each identity's photos: (closeness f32[I,k], query int32[I,k])."""
  ref_sqnorms = _ref_sqnorms(refs, metric)

  def step(best, chunk, rows):
    closeness = _identity_closeness(chunk, refs, ref_sqnorms, ref_identity, num_identities, metric,
                                    layout)
    return _update_top_k(best, closeness, layout.query_offset + rows, _valid_queries(rows, layout),
                         k), None

  init = layout.varying(_empty_top_k((num_identities, k)), over_refs=False)
  best, _ = stream_queries(queries, chunk_size, init, step)
  if layout.data_axis is not None:
    best = _merge_across(*best, k, layout.data_axis)
  return best


def count_above_kernel(queries, refs, ref_identity, threshold, *, num_identities: int,
                       chunk_size: int, metric: Metric, layout: Layout) -> jax.Array:
  """int32[I]: samples strictly closer to an identity's nearest photo than `threshold`."""
  ref_sqnorms = _ref_sqnorms(refs, metric)
  limit = _to_closeness(jnp.asarray(threshold, jnp.float32), metric)

  def step(count, chunk, rows):
    closeness = _identity_closeness(chunk, refs, ref_sqnorms, ref_identity, num_identities, metric,
                                    layout)
    near = (closeness > limit) & _valid_queries(rows, layout)[None, :]
    return count + jnp.sum(near, axis=1, dtype=jnp.int32), None

  init = layout.varying(jnp.zeros(num_identities, jnp.int32), over_refs=False)
  count, _ = stream_queries(queries, chunk_size, init, step)
  if layout.data_axis is not None:
    count = lax.psum(count, layout.data_axis)
  return count


def top_k_identities_kernel(queries, refs, ref_identity, *, num_identities: int, k: int,
                            chunk_size: int, metric: Metric,
                            layout: Layout) -> tuple[jax.Array, jax.Array]:
  """The k identities nearest each sample: (closeness f32[Q,k], identity int32[Q,k])."""
  ref_sqnorms = _ref_sqnorms(refs, metric)
  identities = jnp.arange(num_identities, dtype=jnp.int32)

  def step(carry, chunk, rows):
    closeness = _identity_closeness(chunk, refs, ref_sqnorms, ref_identity, num_identities, metric,
                                    layout)
    return carry, _merge_top_k(*_top_k_candidates(closeness.T, identities, None, k), k)

  return stream_queries(queries, chunk_size, None, step)[1]


# ------------------------------------------------------------------------------------------------
# Boundary checks shared by the single-device and the sharded entry points.


# ------------------------------------------------------------------------------------------------
# Running a kernel on one device (gmia.kernels.search calls these).


def finish(outputs, metric: Metric):
  """Kernel outputs in user units: kernels that rank return their closeness first."""
  if isinstance(outputs, tuple):
    return (from_closeness(outputs[0], metric), *outputs[1:])
  return outputs


@functools.partial(jax.jit, static_argnames=("kernel", "options"))
def run_whole(arrays, *, kernel, options):
  options = dict(options)
  outputs = kernel(*arrays, layout=Layout.whole(arrays[0], arrays[1]), **options)
  return finish(outputs, options["metric"])


def static_options(**options) -> tuple:
  """Kernel keyword arguments as a hashable, canonical jit static argument."""
  return tuple(sorted((name, int(value) if isinstance(value, (int, np.integer)) else value)
                      for name, value in options.items()))
