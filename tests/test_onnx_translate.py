"""gmia.onnx operator by operator against onnxruntime, on tiny graphs built with onnx.helper.

Also: constant folding at import, named outputs and feeds (split points), gradients against
finite differences, sharding over a mesh, and the one-line errors.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gmia.onnx import import_onnx  # noqa: E402
from tests.multidevice import run_with_devices  # noqa: E402

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 4, 9, 8)).astype(np.float32)
INT64_MAX = np.iinfo(np.int64).max
NO_ROI = np.zeros(0, np.float32)


def f32(*shape, low=None):
  values = RNG.normal(size=shape).astype(np.float32)
  return np.abs(values) + low if low is not None else values


def i64(*values):
  return np.asarray(values, np.int64)


def model(nodes, inputs, initializers=None, outputs=("y",), opset=17, output_type=None,
          output_shape=None):
  """A ModelProto of `nodes` with graph inputs {name: example array} and float outputs."""
  def info(name, value):
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype),
                                         value.shape)
  graph = helper.make_graph(
      nodes, "test", [info(n, v) for n, v in inputs.items()],
      [helper.make_tensor_value_info(o, output_type or TensorProto.FLOAT, output_shape)
       for o in outputs],
      [numpy_helper.from_array(v, n) for n, v in (initializers or {}).items()])
  proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
  proto.ir_version = 10 if opset >= 21 else 8
  return proto


def onnxruntime(proto, inputs):
  session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
  return session.run(None, inputs)


def node(op, inputs, outputs=("y",), **attributes):
  """A node named after its operator and first output (names must be unique in a graph)."""
  return helper.make_node(op, list(inputs), list(outputs), name=f"{op.lower()}_{outputs[0]}",
                          **attributes)


def single(op, inputs, initializers=None, opset=17, outputs=("y",), **attributes):
  """A one-node graph: `inputs` {name: array} are graph inputs, `initializers` constants."""
  names = list(inputs) + list(initializers or {})
  return (model([node(op, names, outputs, **attributes)], inputs, initializers, outputs, opset),
          inputs)


def chain(nodes, inputs, initializers=None, opset=17, outputs=("y",)):
  return model(nodes, inputs, initializers, outputs, opset), inputs


def blocked_dequantize():
  q = RNG.integers(-128, 127, (3, 10)).astype(np.int8)
  return single("DequantizeLinear", {"q": q},
                {"scale": f32(3, 3, low=0.01), "zero": RNG.integers(-5, 5, (3, 3)).astype(np.int8)},
                opset=21, axis=1, block_size=4)


CASES = {
    # Convolutions: groups, dilations, explicit / automatic pads, every fast path.
    "conv_groups_dilations": single("Conv", {"x": X}, {"w": f32(6, 2, 3, 3), "b": f32(6)},
                                    group=2, dilations=[2, 1], pads=[1, 0, 2, 1], strides=[2, 1]),
    "conv_same_upper": single("Conv", {"x": X}, {"w": f32(5, 4, 3, 2)}, auto_pad="SAME_UPPER",
                              strides=[2, 2]),
    "conv_same_lower": single("Conv", {"x": X}, {"w": f32(5, 4, 4, 4)}, auto_pad="SAME_LOWER",
                              strides=[1, 2]),
    "conv_valid": single("Conv", {"x": X}, {"w": f32(3, 4, 2, 2)}, auto_pad="VALID"),
    "conv_depthwise": single("Conv", {"x": X}, {"w": f32(4, 1, 3, 3), "b": f32(4)}, group=4,
                             strides=[2, 1], pads=[1, 2, 1, 2], dilations=[1, 2]),
    "conv_pointwise_strided": single("Conv", {"x": X}, {"w": f32(6, 4, 1, 1)}, strides=[2, 2]),
    "conv_few_channels": single("Conv", {"x": X[:, :2]}, {"w": f32(4, 2, 3, 3)}, strides=[2, 2],
                                pads=[1, 1, 1, 1]),
    "conv_1d": single("Conv", {"x": X[:, :, 0]}, {"w": f32(5, 4, 3)}, pads=[1, 1]),
    "conv_transpose": single("ConvTranspose", {"x": X}, {"w": f32(4, 3, 3, 3), "b": f32(3)},
                             strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]),
    "conv_transpose_groups": single("ConvTranspose", {"x": X}, {"w": f32(4, 2, 3, 2)}, group=2,
                                    strides=[1, 2], dilations=[2, 1]),
    "conv_transpose_same": single("ConvTranspose", {"x": X}, {"w": f32(4, 2, 4, 4)},
                                  strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv_transpose_output_shape": single("ConvTranspose", {"x": X}, {"w": f32(4, 2, 3, 3)},
                                          strides=[2, 2], output_shape=[18, 16]),
    "batch_norm": single("BatchNormalization", {"x": X}, {"s": f32(4), "b": f32(4), "m": f32(4),
                                                          "v": f32(4, low=0.1)}, epsilon=1e-3),
    # Activations.
    "prelu": single("PRelu", {"x": X}, {"slope": f32(4, 1, 1)}),
    "relu": single("Relu", {"x": X}),
    "leaky_relu": single("LeakyRelu", {"x": X}, alpha=0.2),
    "sigmoid": single("Sigmoid", {"x": X}),
    "tanh": single("Tanh", {"x": X}),
    "clip_inputs": single("Clip", {"x": X}, {"lo": np.float32(-0.5), "hi": np.float32(0.7)},
                          opset=13),
    "clip_attributes": single("Clip", {"x": X}, opset=6, min=-0.3, max=0.2),
    "softmax_opset11": single("Softmax", {"x": X}, opset=11, axis=1),
    "softmax_opset13": single("Softmax", {"x": X}, opset=13, axis=2),
    "log_softmax": single("LogSoftmax", {"x": X}, axis=-1),
    # Broadcasting arithmetic.
    "add": single("Add", {"x": X}, {"c": f32(4, 1, 1)}),
    "sub": single("Sub", {"x": X}, {"c": f32(8)}),
    "mul": single("Mul", {"x": X}, {"c": f32(1, 4, 1, 8)}),
    "div": single("Div", {"x": X}, {"c": f32(9, 1, low=0.5)}),
    "elementwise_misc": chain(
        [node("Abs", ["x"], ["a"]), node("Max", ["a", "tenth"], ["m"]),
         node("Pow", ["m", "two"], ["p"]), node("Floor", ["x"], ["f"]), node("Ceil", ["x"], ["c"]),
         node("Sqrt", ["a"], ["s"]), node("Neg", ["a"], ["n"]), node("Exp", ["n"], ["e"]),
         node("Add", ["a", "one"], ["a1"]), node("Log", ["a1"], ["l"]),
         node("Reciprocal", ["a1"], ["r"]), node("Min", ["x", "zero"], ["mn"]),
         node("Sum", ["p", "f", "c", "s", "e", "l", "r", "mn"], ["y"])],
        {"x": X}, {"tenth": np.float32(0.1), "two": np.float32(2), "one": np.float32(1),
                   "zero": np.float32(0)}),
    "where_greater": chain([node("Greater", ["x", "zero"], ["g"]), node("Neg", ["x"], ["n"]),
                            node("Where", ["g", "x", "n"], ["y"])],
                           {"x": X}, {"zero": np.float32(0)}),
    # Matrix products.
    "matmul": single("MatMul", {"x": f32(2, 3, 4)}, {"w": f32(4, 5)}),
    "gemm": single("Gemm", {"a": f32(4, 3)}, {"b": f32(5, 4), "c": f32(5)}, transA=1, transB=1,
                   alpha=0.5, beta=2.0),
    # Shapes and indexing.
    "flatten": single("Flatten", {"x": X}, axis=2),
    "reshape": single("Reshape", {"x": X}, {"shape": i64(0, -1, 4)}),
    "transpose": single("Transpose", {"x": X}, perm=[0, 2, 3, 1]),
    "concat": single("Concat", {"x": X, "z": f32(2, 3, 9, 8)}, axis=1),
    "slice_inputs": single("Slice", {"x": X}, {"starts": i64(1, -1), "ends": i64(INT64_MAX, -100),
                                               "axes": i64(1, 3), "steps": i64(1, -2)}),
    "slice_attributes": single("Slice", {"x": X}, opset=9, starts=[0, 2], ends=[2, -1],
                               axes=[0, 2]),
    "split_input": single("Split", {"x": X}, {"split": i64(1, 3)}, opset=13, axis=1,
                          outputs=("y", "y2")),
    "split_attribute": single("Split", {"x": X}, opset=11, axis=2, split=[5, 4],
                              outputs=("y", "y2")),
    "split_num_outputs": single("Split", {"x": X}, opset=18, axis=3, num_outputs=3,
                                outputs=("y", "y2", "y3")),
    "squeeze_attribute": single("Squeeze", {"x": X[:1]}, opset=11, axes=[0]),
    "squeeze_input": single("Squeeze", {"x": X[:1, :, :1]}, {"axes": i64(0, -2)}, opset=13),
    "unsqueeze_attribute": single("Unsqueeze", {"x": X}, opset=11, axes=[0, -1]),
    "unsqueeze_input": single("Unsqueeze", {"x": X}, {"axes": i64(1)}, opset=13),
    "gather": single("Gather", {"x": X}, {"i": i64(-1, 0, 2)}, axis=1),
    "tile": single("Tile", {"x": X}, {"reps": i64(1, 2, 1, 3)}),
    # Pooling.
    "max_pool": single("MaxPool", {"x": X}, kernel_shape=[3, 3], strides=[2, 2],
                       pads=[1, 1, 1, 1]),
    "max_pool_ceil": single("MaxPool", {"x": X}, kernel_shape=[3, 2], strides=[2, 3],
                            ceil_mode=1),
    "max_pool_dilated": single("MaxPool", {"x": X}, kernel_shape=[2, 2], dilations=[2, 2]),
    "average_pool": single("AveragePool", {"x": X}, kernel_shape=[3, 3], strides=[2, 2],
                           pads=[1, 1, 1, 1]),
    "average_pool_include_pad_ceil": single("AveragePool", {"x": X}, kernel_shape=[3, 3],
                                            strides=[2, 2], pads=[1, 0, 1, 1],
                                            count_include_pad=1, ceil_mode=1),
    "global_average_pool": single("GlobalAveragePool", {"x": X}),
    "reduce_mean": single("ReduceMean", {"x": X}, opset=13, axes=[1, 3]),
    "reduce_sum": single("ReduceSum", {"x": X}, {"axes": i64(2)}, opset=13, keepdims=0),
    "reduce_l2": single("ReduceL2", {"x": X}, {"axes": i64(-1)}, opset=18),
    # Resize in the forms exporters write (YuNet's first).
    "resize_nearest_asymmetric_floor": single(
        "Resize", {"x": X}, {"roi": NO_ROI, "scales": np.float32([1, 1, 2, 2])},
        opset=11, mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor"),
    "resize_nearest_half_pixel_sizes": single(
        "Resize", {"x": X}, {"roi": NO_ROI, "scales": NO_ROI,
                             "sizes": i64(2, 4, 14, 5)}, opset=13, mode="nearest"),
    "resize_nearest_prefer_ceil": single(
        "Resize", {"x": X}, {"roi": NO_ROI, "scales": np.float32([1, 1, 0.6, 1.7])},
        opset=13, mode="nearest", nearest_mode="round_prefer_ceil",
        coordinate_transformation_mode="asymmetric"),
    "resize_linear_down": single(
        "Resize", {"x": X}, {"roi": NO_ROI, "scales": NO_ROI,
                             "sizes": i64(2, 4, 5, 4)}, opset=13, mode="linear"),
    "resize_linear_align_corners": single(
        "Resize", {"x": X}, {"roi": NO_ROI, "scales": NO_ROI, "sizes": i64(2, 4, 13, 12)},
        opset=13, mode="linear", coordinate_transformation_mode="align_corners"),
    "resize_linear_pytorch_half_pixel": single(
        "Resize", {"x": X}, {"roi": NO_ROI, "scales": NO_ROI,
                             "sizes": i64(2, 4, 1, 12)}, opset=13, mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel"),
    "upsample": single("Upsample", {"x": X}, {"scales": np.float32([1, 1, 2, 3])}, opset=9),
    # Pad.
    "pad_constant": single("Pad", {"x": X}, {"pads": i64(0, 0, 1, 2, 0, 0, 2, 1),
                                             "value": np.float32(1.5)}, opset=13),
    "pad_reflect": single("Pad", {"x": X}, {"pads": i64(0, 0, 2, 1, 0, 0, 1, 3)}, opset=13,
                          mode="reflect"),
    "pad_edge_crop": single("Pad", {"x": X}, {"pads": i64(0, 0, -1, 2, 0, 0, 2, -3)}, opset=13,
                            mode="edge"),
    "pad_attributes": single("Pad", {"x": X}, opset=9, pads=[0, 1, 1, 0, 0, 0, 1, 2], value=-2.0),
    # Constants and no-ops.
    "constant_identity_dropout": chain(
        [node("Constant", [], ["c"], value=numpy_helper.from_array(f32(8), "c")),
         node("Add", ["x", "c"], ["s"]), node("Identity", ["s"], ["i"]),
         node("Dropout", ["i"], ["y"])], {"x": X}, opset=13),
    # DequantizeLinear per tensor, per axis and in opset 21's blocks (on a graph input: kept).
    "dequantize_per_tensor": single("DequantizeLinear",
                                    {"q": RNG.integers(-128, 127, (4, 6)).astype(np.int8)},
                                    {"scale": np.float32(0.05), "zero": np.int8(3)}),
    "dequantize_per_axis": single("DequantizeLinear",
                                  {"q": RNG.integers(0, 255, (4, 6)).astype(np.uint8)},
                                  {"scale": f32(6, low=0.01), "zero": np.arange(6, dtype=np.uint8)},
                                  axis=1),
    "dequantize_blocked": blocked_dequantize(),
    # Shape arithmetic that import folds: view(x.size(0), -1), ConstantOfShape, Expand, Range.
    "shape_view": chain(
        [node("Shape", ["x"], ["shape"]), node("Gather", ["shape", "zero"], ["n"], axis=0),
         node("Unsqueeze", ["n", "axes"], ["n1"]), node("Concat", ["n1", "minus"], ["target"],
                                                        axis=0),
         node("Reshape", ["x", "target"], ["y"])],
        {"x": X}, {"zero": np.int64(0), "axes": i64(0), "minus": i64(-1)}, opset=13),
    "shape_constant_of_shape_expand_range": chain(
        [node("Shape", ["x"], ["shape"]),
         helper.make_node("ConstantOfShape", ["shape"], ["half"],
                          value=numpy_helper.from_array(np.float32([0.5]))),
         node("Mul", ["x", "half"], ["m"]), node("Range", ["start", "limit", "delta"], ["r"]),
         node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT), node("Add", ["m", "rf"], ["a"]),
         node("Expand", ["c", "shape"], ["e"]), node("Add", ["a", "e"], ["y"])],
        {"x": X}, {"start": np.int64(0), "limit": np.int64(8), "delta": np.int64(1),
                   "c": f32(4, 1, 1)}, opset=13),
}


def channels_last_chain():
  """Operators that run on channels-last tensors (convolutions, elementwise ops broadcasting
  ONNX-layout constants, BatchNorm, pools, Concat, Resize, Pad, a Transpose absorbing the
  layout) and ones that take ONNX's layout back (Slice, ReduceMean, Reshape, Gemm)."""
  nodes = [
      node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
      node("PRelu", ["c", "slope"], ["p"]),
      node("BatchNormalization", ["p", "s", "b", "m", "v"], ["bn"]),
      node("Add", ["bn", "shift"], ["a"]),
      node("MaxPool", ["a"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
      node("Conv", ["mp", "dw"], ["d"], group=6, pads=[1, 1, 1, 1]),
      node("Concat", ["mp", "d"], ["cat"], axis=1),
      node("Resize", ["cat", "", "scales"], ["r"], mode="linear"),
      node("Pad", ["r", "pads"], ["pd"]),
      node("GlobalAveragePool", ["pd"], ["g"]), node("Sigmoid", ["g"], ["gs"]),
      node("Mul", ["pd", "gs"], ["z"]),
      node("Slice", ["z", "starts", "ends", "axes"], ["sl"]),
      node("ReduceMean", ["z"], ["mean"], axes=[1, 3], keepdims=0),
      node("Transpose", ["z"], ["t"], perm=[0, 2, 3, 1]),
      node("Reshape", ["t", "flat_shape"], ["flat"]),
      node("Gemm", ["flat", "fc"], ["y"], transB=1)]
  return chain(nodes, {"x": X}, {
      "w": f32(6, 4, 3, 3), "slope": f32(6, 1, 1), "s": f32(6), "b": f32(6), "m": f32(6),
      "v": f32(6, low=0.1), "shift": f32(6, 1, 1), "dw": f32(6, 1, 3, 3),
      "scales": np.float32([1, 1, 2, 1.5]), "pads": i64(0, 0, 1, 0, 0, 0, 0, 2),
      "starts": i64(1), "ends": i64(4), "axes": i64(1), "flat_shape": i64(2, -1),
      "fc": f32(3, 12 * 11 * 8)}, opset=13, outputs=("y", "sl", "mean", "z"))


CASES["channels_last_chain"] = channels_last_chain()


def test_channels_last_chain_holds_its_tensors_channels_last():
  # The chain above really runs channels-last (else its match would test nothing new), and
  # matches the graph run in ONNX's layout throughout.
  proto, inputs = CASES["channels_last_chain"]
  net, plain = import_onnx(proto), import_onnx(proto, channels_last=False)
  assert {"c", "p", "bn", "a", "mp", "d", "cat", "r", "pd", "g", "gs", "z"} <= net._held
  assert not {"sl", "mean", "t", "flat", "y"} & net._held and not plain._held
  for got, want in zip(jax.jit(net.apply)(net.params, X), plain.apply(plain.params, X)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_operator_matches_onnxruntime(name):
  proto, inputs = CASES[name]
  expected = onnxruntime(proto, inputs)
  net = import_onnx(proto)
  got = jax.jit(net.apply)(net.params, *inputs.values())
  got = got if isinstance(got, tuple) else (got,)
  assert len(got) == len(expected)
  for g, e in zip(got, expected):
    assert g.shape == e.shape
    scale = max(1.0, float(np.abs(e).max()))
    np.testing.assert_allclose(np.asarray(g), e, rtol=1e-5, atol=1e-5 * scale)


def test_import_folds_constant_subgraphs():
  # The blocked int8 weight of a conv becomes a float32 param equal to (q - zero) * scale,
  # and the shape arithmetic of a view disappears: only Conv and Reshape run.
  q = RNG.integers(-128, 127, (3, 4 * 9)).astype(np.int8)
  scale = f32(3, 9, low=0.01)
  zero = RNG.integers(-3, 3, (3, 9)).astype(np.int8)
  proto = model(
      [node("DequantizeLinear", ["q", "scale", "zero"], ["w_flat"], axis=1, block_size=4),
       node("Reshape", ["w_flat", "w_shape"], ["w"]), node("Conv", ["x", "w"], ["c"]),
       node("Shape", ["c"], ["shape"]), node("Gather", ["shape", "zero_index"], ["n"]),
       node("Unsqueeze", ["n", "axes"], ["n1"]),
       node("Concat", ["n1", "minus"], ["target"], axis=0),
       node("Reshape", ["c", "target"], ["y"])],
      {"x": X}, {"q": q, "scale": scale, "zero": zero, "w_shape": i64(3, 4, 3, 3),
                 "zero_index": np.int64(0), "axes": i64(0), "minus": i64(-1)}, opset=21)
  net = import_onnx(proto)
  assert [op for _, op in net.nodes] == ["Conv", "Reshape"]
  assert set(net.params) == {"w"}
  expected = ((q.astype(np.float32) - np.repeat(zero, 4, 1)) * np.repeat(scale, 4, 1))
  np.testing.assert_array_equal(net.params["w"], expected.reshape(3, 4, 3, 3))
  expected = onnxruntime(proto, {"x": X})[0]  # Sums of 36 products up to 700: scale-aware.
  np.testing.assert_allclose(net.apply(net.params, X), expected, rtol=1e-5,
                             atol=1e-6 * np.abs(expected).max())


def residual_model():
  """x -> conv -> relu (r1) -> conv -> relu (r2) -> r1 + r2 (a1) -> conv -> sigmoid (y).

  After r1 nothing but r1 is still needed, and after a1 nothing but a1: these are the split
  points; between them r1 is needed beside the branch.
  """
  nodes = [node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
           node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), node("Relu", ["c2"], ["r2"]),
           node("Add", ["r1", "r2"], ["a1"]), node("Conv", ["a1", "w3"], ["c3"]),
           node("Sigmoid", ["c3"], ["y"])]
  return model(nodes, {"x": X}, {"w1": f32(6, 4, 3, 3), "w2": f32(6, 6, 3, 3),
                                 "w3": f32(2, 6, 1, 1)}, output_shape=(2, 2, 9, 8))


def test_named_outputs_feeds_and_split_points(tmp_path):
  proto = residual_model()
  net = import_onnx(proto)
  assert net.split_points == ("r1", "a1")
  assert net.shapes["a1"] == (2, 6, 9, 8)
  with_intermediates = onnx.ModelProto()
  with_intermediates.CopyFrom(proto)
  with_intermediates.graph.output.extend(
      [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("r1", "a1")])
  y, r1, a1 = onnxruntime(with_intermediates, {"x": X})
  got_r1, got_a1 = jax.jit(lambda p, x: net.apply(p, x, outputs=("r1", "a1")))(net.params, X)
  np.testing.assert_allclose(got_r1, r1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_a1, a1, rtol=1e-5, atol=1e-5)
  # Feeding other features at the split point runs only the tail of the graph: it must equal
  # onnxruntime on the tail extracted as a graph of its own.
  path, tail_path = str(tmp_path / "full.onnx"), str(tmp_path / "tail.onnx")
  onnx.save(proto, path)
  onnx.utils.extract_model(path, tail_path, ["a1"], ["y"])
  features = 0.5 * a1 + 0.1
  expected = onnxruntime(onnx.load(tail_path), {"a1": features})[0]
  got = jax.jit(lambda p, f: net.apply(p, feeds={"a1": f}))(net.params, features)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert not np.allclose(expected, y, atol=1e-3)  # The feed really replaced the features.
  with pytest.raises(ValueError, match=r"needs inputs \['x'\]"):
    net.apply(net.params, outputs="r1", feeds={"a1": features})


def test_gradients_match_finite_differences():
  # A float64 graph with every differentiable kind of op the face networks use; directional
  # derivatives along random directions, w.r.t. the input and a weight.
  rng = np.random.default_rng(1)
  d = lambda *s: rng.normal(size=s)
  x = d(1, 3, 8, 8)
  proto = model(
      [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
       node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
       node("PRelu", ["bn", "slope"], ["p"]),
       node("Conv", ["p", "dw"], ["dwc"], group=4, pads=[1, 1, 1, 1]),
       node("Resize", ["dwc", "", "scales"], ["up"], mode="linear"),
       node("AveragePool", ["up", ], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
       node("Tanh", ["pool"], ["t"]), node("Flatten", ["t"], ["f"]),
       node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)],
      {"x": x}, {"w": d(4, 3, 3, 3), "s": d(4), "b": d(4), "m": d(4), "v": np.abs(d(4)) + 0.5,
                 "slope": d(4, 1, 1), "dw": d(4, 1, 3, 3), "scales": np.array([1, 1, 2, 2.]),
                 "fc": d(5, 64), "fcb": d(5)}, output_type=TensorProto.DOUBLE, opset=13)
  weights = rng.normal(size=(1, 5))
  with jax.enable_x64(True):
    net = import_onnx(proto)
    loss = lambda params, x: jnp.sum(net.apply(params, x) * weights)
    grad_params, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(net.params, x)
    assert np.isfinite(grad_x).all() and all(np.isfinite(g).all() for g in grad_params.values())
    eps = 1e-6
    direction = rng.normal(size=x.shape)
    numeric = (loss(net.params, x + eps * direction) - loss(net.params, x - eps * direction)) / (
        2 * eps)
    np.testing.assert_allclose(np.sum(grad_x * direction), numeric, rtol=1e-6)
    direction = rng.normal(size=net.params["w"].shape)
    shifted = lambda sign: {**net.params, "w": net.params["w"] + sign * eps * direction}
    numeric = (loss(shifted(1), x) - loss(shifted(-1), x)) / (2 * eps)
    np.testing.assert_allclose(np.sum(grad_params["w"] * direction), numeric, rtol=1e-6)


def test_sharded_over_a_mesh_equals_one_device(tmp_path):
  path = str(tmp_path / "residual.onnx")
  proto = residual_model()
  proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
  onnx.save(proto, path)
  result = run_with_devices(4, f"""
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from gmia.onnx import import_onnx
net = import_onnx({path!r}, input_shapes={{"x": (8, 4, 9, 8)}})
x = np.random.default_rng(0).normal(size=(8, 4, 9, 8)).astype(np.float32)
mesh = jax.make_mesh((4,), ("data",))
rows = NamedSharding(mesh, P("data"))
sharded = jax.jit(net.apply, in_shardings=(NamedSharding(mesh, P()), rows),
                  out_shardings=rows)(net.params, x)
RESULT = {{"sharded": sharded, "single": jax.jit(net.apply)(net.params, x),
           "shards": len(sharded.addressable_shards)}}
""")
  assert int(result["shards"]) == 4
  np.testing.assert_allclose(result["sharded"], result["single"], rtol=1e-6, atol=1e-6)


def test_unsupported_operator_is_a_one_line_error(tmp_path):
  path = str(tmp_path / "custom.onnx")
  proto = model([helper.make_node("NonMaxSuppression", ["x"], ["y"], name="nms_7")], {"x": X})
  onnx.save(proto, path)
  with pytest.raises(NotImplementedError) as error:
    import_onnx(path)
  message = str(error.value)
  assert "\n" not in message
  assert path in message and "nms_7" in message and "NonMaxSuppression" in message
  cubic = model([node("Resize", ["x", "", "scales"], mode="cubic")], {"x": X},
                {"scales": np.float32([1, 1, 2, 2])}, opset=13)
  with pytest.raises(ValueError, match=r"node 'resize_y' \(Resize\): mode=cubic") as error:
    import_onnx(cubic)
  assert "\n" not in str(error.value)


def test_shapes_are_checked_at_import_and_apply():
  proto = residual_model()
  proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
  with pytest.raises(ValueError, match=r"input 'x' has free dims \['batch'"):
    import_onnx(proto)
  net = import_onnx(proto, input_shapes={"x": (3, 4, 9, 8)})
  assert net.output_shapes == ((3, 2, 9, 8),)
  with pytest.raises(ValueError, match=r"input 'x' must have shape \(3, 4, 9, 8\)"):
    net.apply(net.params, X)
  with pytest.raises(ValueError, match="apply_each needs a leading dim 1"):
    net.apply_each(net.params, X)
