"""gmia.onnx against the node test cases that the installed onnx package ships.

Every case of `onnx.backend.test.case.node` whose operators are all in gmia.onnx.OPS is
imported with its shape-like inputs made constants, as gmia.onnx requires (the graph inputs that
reach an operator's static slot, such as Reshape's shape or Slice's starts, through any nodes
but Shape and Size), and must either match ONNX's expected outputs within the case's
tolerances (ONNX's backend tests use rtol 1e-3, atol 1e-7) or be refused at import with a
one-line error naming the operator (or the input) and what is missing. The refusals are listed
in REFUSED, so a case that matched cannot turn into a refusal unseen, nor a refusal into a
match. Outputs of float64 cases are float32, as everywhere in JAX without x64.

The cases run jitted in groups of GROUP, one compilation per group: run eagerly, every operator
of every shape compiled apart (48 s on 2 CPU cores, against 7 s).
"""

import collections
import warnings

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper  # noqa: E402
from onnx.backend.test.case import node as node_cases  # noqa: E402

from gmia.onnx import OPS, import_onnx  # noqa: E402

GROUP = 64

# Cases refused at import, by the reason the error gives.
REFUSED = {
    "training_mode": [
        "test_batchnorm_example_training_mode", "test_batchnorm_epsilon_training_mode",
        "test_training_dropout", "test_training_dropout_default",
        "test_training_dropout_default_mask", "test_training_dropout_mask"],
    "the Indices output is not supported": [
        "test_maxpool_with_argmax_2d_precomputed_pads",
        "test_maxpool_with_argmax_2d_precomputed_strides"],
    "mode=cubic is not supported": [
        f"test_resize_{case}" for case in (
            "upsample_scales_cubic", "upsample_scales_cubic_align_corners",
            "downsample_scales_cubic", "downsample_scales_cubic_align_corners",
            "upsample_sizes_cubic", "downsample_sizes_cubic",
            "upsample_scales_cubic_A_n0p5_exclude_outside",
            "downsample_scales_cubic_A_n0p5_exclude_outside",
            "upsample_scales_cubic_asymmetric")],
    "antialias=1 is not supported": [
        f"test_resize_downsample_{case}_antialias" for case in (
            "scales_linear", "sizes_linear", "scales_cubic", "sizes_cubic")],
    "coordinate_transformation_mode=tf_crop_and_resize is not supported": [
        "test_resize_tf_crop_and_resize", "test_resize_tf_crop_and_resize_extrapolation_value",
        "test_resize_tf_crop_and_resize_axes_2_3", "test_resize_tf_crop_and_resize_axes_3_2"],
    "align_corners with a scale that gives a fractional length": [
        "test_resize_downsample_scales_linear_align_corners"],
    "to=FLOAT8E8M0 is not supported": [
        "test_cast_e8m0_FLOAT_to_FLOAT8E8M0", "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0"],
    "holds strings": ["test_equal_string", "test_equal_string_broadcast"],
    "is a sequence_type": ["test_identity_sequence"],
    "is a optional_type": ["test_identity_opt"],
}
REASONS = {case: reason for reason, cases in REFUSED.items() for case in cases}


def _operator(node) -> str:
  return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _array(value):
  return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else value


def _supported_cases():
  with warnings.catch_warnings():  # The generators of some cases overflow on purpose.
    warnings.simplefilter("ignore")
    cases = node_cases.collect_testcases(None)
  return {case.name: case for case in cases
          if all(_operator(node) in OPS for node in case.model.graph.node)}


CASES = _supported_cases()


def prepared(case):
  """(model with the shape-like inputs as initialisers, {input name: array}, expected)."""
  model = onnx.ModelProto()
  model.CopyFrom(case.model)
  (inputs, expected), = case.data_sets
  static = set()
  for node in reversed(model.graph.node):
    static |= {node.input[slot] for slot in OPS[_operator(node)].static
               if slot < len(node.input) and node.input[slot]}
    if static.intersection(node.output) and node.op_type not in ("Shape", "Size"):
      static |= set(node.input)
  fed = {}
  for value, x in zip(list(model.graph.input), inputs):
    if value.name in static:
      model.graph.initializer.append(numpy_helper.from_array(_array(x), value.name))
      model.graph.input.remove(value)
    else:
      fed[value.name] = x
  return model, fed, expected


def _import(name):
  """('imported', net, inputs, expected) or ('refused', message)."""
  model, fed, expected = prepared(CASES[name])
  read = {tensor for node in model.graph.node for tensor in node.input}
  try:
    net = import_onnx(model, input_shapes={k: np.shape(_array(v)) for k, v in fed.items()
                                           if k in read and not isinstance(v, list)})
  except ValueError as error:
    return ("refused", str(error))
  return ("imported", net, [_array(fed[k]) for k in net.input_names], expected)


@pytest.fixture(scope="module")
def results():
  """{case name: ('refused', message) | ('ran', outputs, expected)}, all groups compiled once."""
  found = {name: _import(name) for name in CASES}
  imported = [name for name, result in found.items() if result[0] == "imported"]
  for start in range(0, len(imported), GROUP):
    names = imported[start:start + GROUP]
    nets = [found[name][1] for name in names]
    run = jax.jit(lambda params, inputs, nets=nets: [
        net.apply(p, *x, outputs=net.output_names) for net, p, x in zip(nets, params, inputs)])
    outputs = run([net.params for net in nets], [found[name][2] for name in names])
    for name, output in zip(names, outputs):
      found[name] = ("ran", [np.asarray(y) for y in output], found[name][3])
  return found


def undefined(case, expected):
  """bool[...] of the expected elements that ONNX leaves undefined: a float cast to an integer
  type out of its range (Cast's specification: "fixed point: undefined if OOR")."""
  (inputs, _), = case.data_sets
  casts = all(node.op_type == "Cast" for node in case.model.graph.node)
  x = _array(inputs[0]) if inputs else None
  if not (casts and x is not None and jnp.issubdtype(x.dtype, jnp.floating)
          and jnp.issubdtype(expected.dtype, jnp.integer)):
    return np.zeros(expected.shape, bool)
  whole, info = np.trunc(x.astype(np.float64)), ml_dtypes.iinfo(expected.dtype)
  return ~((whole >= info.min) & (whole <= info.max))


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_matches_or_is_refused(name, results):
  result = results[name]
  if name in REASONS:
    assert result[0] == "refused", f"{name} now runs: take it out of REFUSED"
    message = result[1]
    assert "\n" not in message and REASONS[name] in message
    ops = {node.op_type for node in CASES[name].model.graph.node}
    assert any(f"({op})" in message for op in ops) or "input" in message
    return
  assert result[0] == "ran", f"{name} was refused: {result[1]}"
  _, outputs, expected = result
  case = CASES[name]
  assert len(outputs) == len(expected)
  for got, want in zip(outputs, map(_array, expected)):
    assert got.shape == want.shape
    assert got.dtype in (want.dtype, jax.dtypes.canonicalize_dtype(want.dtype))
    keep = ~undefined(case, want)
    np.testing.assert_allclose(got[keep].astype(np.float64), want[keep].astype(np.float64),
                               rtol=case.rtol, atol=case.atol, equal_nan=True)


def test_table(results):
  """The counts (printed with -s); the supported cases are most of ONNX's."""
  counts = collections.Counter("refused" if r[0] == "refused" else "ran" for r in results.values())
  print(f"\nONNX node cases with supported operators: {len(results)}; ran {counts['ran']}, "
        f"refused at import {counts['refused']}")
  assert counts["refused"] == len(REASONS)
  assert len(results) > 700
