"""Sharded kernels: 8 simulated devices (queries on `data`, refs replicated or on `refs`) give the
results of 1 device and of numpy brute force, for sizes that divide neither the chunk nor the
device counts."""

import jax.numpy as jnp
import numpy as np
import pytest

from gmia import kernels
from tests import test_kernels as ref
from tests.multidevice import run_with_devices

Q, R, D, I, K, CHUNK = 37, 53, 16, 8, 5, 4
THRESHOLD = 0.3
# (mesh shape, reference axis): queries over 8 devices with refs replicated; 2 x 4 with refs split.
LAYOUTS = {"data8": ((8, 1), None), "data2_refs4": ((2, 4), "refs")}

# Runs in this process (1 device) and in a subprocess (8 devices); leaves every result in RESULT.
COMPUTE = f"""
import numpy as np
from gmia import kernels

rng = np.random.default_rng(0)
def unit_rows(n):
  x = rng.standard_normal((n, {D}))
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
queries, refs, ref_identity = unit_rows({Q}), unit_rows({R}), rng.integers(0, {I} - 1, {R})
eye = np.eye(4, dtype=np.float32)  # exact ties
tie_queries, tie_refs = eye[[0, 2, 2, 3, 1, 2, 0]], eye[[2, 0, 2, 1, 0, 3, 2, 2, 0]]
tie_identity = np.array([1, 0, 1, 1, 0, 2, 2, 0, 2])
# Integer vectors: exact squared distances with many ties, rows wide enough for grouped top-k.
wide_queries = rng.integers(0, 3, (19, 4)).astype(np.float32)
wide_refs = rng.integers(0, 3, (1101, 4)).astype(np.float32)  # padded to 4 x 276

RESULT = dict(queries=queries, refs=refs, ref_identity=ref_identity, wide_queries=wide_queries,
              wide_refs=wide_refs)
for name, (shape, ref_axis) in {LAYOUTS!r}.items():
  mesh = kernels.make_search_mesh(*shape) if SIMULATED else kernels.make_search_mesh(1, 1)
  kw = dict(mesh=mesh, ref_axis=ref_axis, chunk_size={CHUNK})
  out = {{}}
  out["top_k"] = kernels.top_k(queries, refs, {K}, ref_chunk_size=6, **kw)
  out["top_k_sq"] = kernels.top_k(queries, refs, {K}, metric="sqeuclidean", **kw)
  out["best"] = kernels.best_match_per_identity(queries, refs, ref_identity, {I}, **kw)
  out["per_identity"] = kernels.top_k_per_identity(queries, refs, ref_identity, {I}, 6, **kw)
  out["count"] = (kernels.count_above(queries, refs, ref_identity, {I}, {THRESHOLD}, **kw),)
  out["identities"] = kernels.top_k_identities(queries, refs, ref_identity, {I}, 3, **kw)
  out["tie_top_k"] = kernels.top_k(tie_queries, tie_refs, 4, **kw)
  out["tie_best"] = kernels.best_match_per_identity(tie_queries, tie_refs, tie_identity, 3, **kw)
  out["wide_top_k"] = kernels.top_k(wide_queries, wide_refs, 2, metric="sqeuclidean", **kw)
  for kernel, arrays in out.items():
    for i, array in enumerate(arrays):
      RESULT[f"{{name}}/{{kernel}}/{{i}}"] = np.asarray(array)
"""


@pytest.fixture(scope="module")
def eight_devices():
  return run_with_devices(8, "SIMULATED = True\n" + COMPUTE)


@pytest.fixture(scope="module")
def one_device():
  scope = {"SIMULATED": False}
  exec(COMPUTE, scope)
  return scope["RESULT"]


def brute(result):
  """Brute-force expectations for every kernel of COMPUTE, keyed like its RESULT."""
  q, r, ids = result["queries"], result["refs"], result["ref_identity"]
  eye = np.eye(4, dtype=np.float32)
  tq, tr = eye[[0, 2, 2, 3, 1, 2, 0]], eye[[2, 0, 2, 1, 0, 3, 2, 2, 0]]
  return {
      "top_k": ref.brute_top_k(q, r, K),
      "top_k_sq": ref.brute_top_k(q, r, K, "sqeuclidean"),
      "best": ref.brute_best_match(q, r, ids, I),
      "per_identity": ref.brute_top_k_per_identity(q, r, ids, I, 6),
      "count": (ref.brute_count_above(q, r, ids, I, THRESHOLD),),
      "identities": ref.brute_top_k_identities(q, r, ids, I, 3),
      "tie_top_k": ref.brute_top_k(tq, tr, 4),
      "tie_best": ref.brute_best_match(tq, tr, np.array([1, 0, 1, 1, 0, 2, 2, 0, 2]), 3),
      "wide_top_k": ref.brute_top_k(result["wide_queries"], result["wide_refs"], 2, "sqeuclidean"),
  }


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_eight_devices_match_brute_force_and_one_device(eight_devices, one_device, layout):
  for kernel, expected in brute(eight_devices).items():
    for i, expected_array in enumerate(expected):
      key = f"{layout}/{kernel}/{i}"
      actual, single = eight_devices[key], one_device[key]
      if np.issubdtype(actual.dtype, np.integer):
        np.testing.assert_array_equal(actual, expected_array, err_msg=key)
        np.testing.assert_array_equal(actual, single, err_msg=key)
      else:
        ref.assert_values(actual, expected_array)
        ref.assert_values(actual, single)


def test_mesh_errors():
  mesh = kernels.make_search_mesh(1, 1)
  queries = jnp.eye(3, 4, dtype=jnp.float32)
  with pytest.raises(ValueError, match="ref_axis 'model'"):
    kernels.top_k(queries, queries, 2, mesh=mesh, ref_axis="model")
  with pytest.raises(ValueError, match="must differ"):
    kernels.top_k(queries, queries, 2, mesh=mesh, ref_axis="data")
  with pytest.raises(ValueError, match="k must be"):
    kernels.top_k(queries, queries, 4, mesh=mesh)
  with pytest.raises(ValueError, match="devices"):
    kernels.make_search_mesh(64, 2)
