"""Export a gmia IResNet to an insightface-layout ONNX graph: the tests' way to run gmia's network
in onnxruntime (the reference the importer, the ONNX translator and the split networks are
checked against; tests/iresnet_onnx_import.py reads this layout back). The graph is what arcface_torch's
export of its IResNet gives: an NCHW float input "input.1" of fixed size, initializers named after
the PyTorch modules (conv1, bn1, prelu, layer1.0.bn1, layer1.0.conv1, ..., layer1.0.downsample.0,
bn2, fc, features), opset 13. With `fold_bn`, every BN that follows a conv is folded into the
conv's weight and bias, as in insightface's released files (e.g. w600k_r50.onnx), whose folded
tensors carry PyTorch's numbered names (onnx::Conv_<n>); the block-leading BNs, the head BN and the
features BN stay.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmia.models.iresnet import IResNet, input_size
from tests.iresnet_onnx_import import EPS

INPUT_NAME = "input.1"
# A small IResNet for the tests, and its input side.
BLOCKS, WIDTH, SIZE, FEATURES = (2, 2, 2, 2), 8, 32, 16
MODEL = IResNet(blocks=BLOCKS, width=WIDTH, num_features=FEATURES)


def random_variables(model, seed=0):
  """Variables of `model` for SIZE px inputs, drawn in numpy: kernels scaled by fan-in, BN
  scales and variances around 1, slopes in [0.1, 0.4], biases and means around 0."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape)
    if name == "negative_slope":
      return rng.uniform(0.1, 0.4, leaf.shape)
    return rng.normal(0, 0.1, leaf.shape)

  return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(np.float32), abstract)
_OPSET, _IR_VERSION = 13, 8  # Read by onnxruntime and TensorRT alike.


def _check_variables(model: IResNet, variables: dict[str, Any], size: int) -> None:
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  expected = dict(jax.tree_util.tree_leaves_with_path(abstract))
  got = dict(jax.tree_util.tree_leaves_with_path(variables))
  for path, leaf in expected.items():
    name = jax.tree_util.keystr(path)
    if path not in got:
      raise ValueError(f"the variables have no {name}: they are not of this model")
    if tuple(np.shape(got[path])) != tuple(leaf.shape):
      raise ValueError(f"{name} has shape {tuple(np.shape(got[path]))} but the model expects "
                       f"{tuple(leaf.shape)}")


def _at(tree: dict[str, Any], path: str) -> Any:
  for key in path.split("/"):
    tree = tree[key]
  return tree


class _Emitter:
  """Collects the graph's nodes and initializers, reading weights from the Flax variables by
  their module paths ("stage1_block1/conv1")."""

  def __init__(self, variables: dict[str, Any], fold_bn: bool):
    self.params, self.stats = variables["params"], variables["batch_stats"]
    self.fold_bn = fold_bn
    self.nodes: list[Any] = []
    self.initializers: list[Any] = []

  def const(self, name: str, value: Any) -> str:
    from onnx import numpy_helper
    self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
    return name

  def node(self, op: str, inputs: list[str], name: str, **attributes: Any) -> str:
    from onnx import helper
    output = f"{name}_out"
    self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
    return output

  def _bn_values(self, path: str) -> tuple[np.ndarray, ...]:
    params, stats = _at(self.params, path), _at(self.stats, path)
    bias = np.asarray(params["bias"], np.float32)
    scale = np.asarray(params["scale"], np.float32) if "scale" in params else np.ones_like(bias)
    return scale, bias, np.asarray(stats["mean"], np.float32), np.asarray(stats["var"], np.float32)

  def bn(self, x: str, path: str, name: str) -> str:
    """BatchNormalization of the Flax BN at `path` (a missing scale is PyTorch's fixed 1)."""
    roles = ("weight", "bias", "running_mean", "running_var")
    inputs = [self.const(f"{name}.{role}", value)
              for role, value in zip(roles, self._bn_values(path))]
    return self.node("BatchNormalization", [x] + inputs, name, epsilon=EPS)

  def conv_bn(self, x: str, conv_path: str, bn_path: str, stride: int, conv_name: str,
              bn_name: str) -> str:
    """Conv (no bias) then BN, or the two as one conv with a bias when folding."""
    kernel = np.asarray(_at(self.params, conv_path)["kernel"], np.float32)
    kernel = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW.
    size = kernel.shape[-1]
    attributes = dict(kernel_shape=[size, size], strides=[stride, stride], pads=[size // 2] * 4)
    if not self.fold_bn:
      y = self.node("Conv", [x, self.const(f"{conv_name}.weight", kernel)], conv_name, **attributes)
      return self.bn(y, bn_path, bn_name)
    scale, bias, mean, var = self._bn_values(bn_path)
    factor = scale / np.sqrt(var + EPS)
    number = len(self.initializers)
    inputs = [self.const(f"onnx::Conv_{number}", kernel * factor[:, None, None, None]),
              self.const(f"onnx::Conv_{number + 1}", bias - mean * factor)]
    return self.node("Conv", [x] + inputs, conv_name, **attributes)

  def prelu(self, x: str, path: str, name: str) -> str:
    slope = np.asarray(_at(self.params, path)["negative_slope"], np.float32)
    # [C, 1, 1] broadcasts over NCHW's H and W.
    return self.node("PRelu", [x, self.const(f"{name}.weight", slope[:, None, None])], name)


def export_onnx(model: IResNet, variables: dict[str, Any], *, fold_bn: bool) -> Any:
  """Export a gmia IResNet to an insightface-layout ONNX graph (an onnx.ModelProto).

  variables: {"params", "batch_stats"} of `model` (e.g. gmia.runs.load_run(workdir, "face_encoder").variables);
  the input size is the one its dense layer was built for. fold_bn: fold each post-conv BN into
  its conv, as insightface's released files do. The graph maps NCHW images in [-1, 1] to the
  unnormalised embedding [N, num_features], as `model.apply(variables, images)` does for NHWC.
  """
  import onnx  # Optional dependency: only exporting and importing ONNX need it.
  from onnx import TensorProto, helper

  size = input_size(model, variables)
  _check_variables(model, variables, size)
  graph = _Emitter(variables, fold_bn)
  x = graph.conv_bn(INPUT_NAME, "stem_conv", "stem_bn", 1, "conv1", "bn1")
  x = graph.prelu(x, "stem_prelu", "prelu")
  for stage, num_blocks in enumerate(model.blocks):
    for block in range(num_blocks):
      name, path = f"layer{stage + 1}.{block}", f"stage{stage + 1}_block{block + 1}"
      stride = 2 if block == 0 else 1
      y = graph.bn(x, f"{path}/bn1", f"{name}.bn1")
      y = graph.conv_bn(y, f"{path}/conv1", f"{path}/bn2", 1, f"{name}.conv1", f"{name}.bn2")
      y = graph.prelu(y, f"{path}/prelu", f"{name}.prelu")
      y = graph.conv_bn(y, f"{path}/conv2", f"{path}/bn3", stride, f"{name}.conv2",
                        f"{name}.bn3")
      shortcut = x
      if block == 0:
        shortcut = graph.conv_bn(x, f"{path}/downsample_conv", f"{path}/downsample_bn", stride,
                                 f"{name}.downsample.0", f"{name}.downsample.1")
      x = graph.node("Add", [y, shortcut], f"{name}.add")
  x = graph.bn(x, "head_bn", "bn2")
  x = graph.node("Flatten", [x], "flatten", axis=1)  # (C, H, W) order, as IResNet flattens.
  fc = variables["params"]["fc"]
  weight = np.asarray(fc["kernel"], np.float32).T  # PyTorch's Linear stores [out, in].
  x = graph.node("Gemm", [x, graph.const("fc.weight", weight), graph.const("fc.bias", fc["bias"])],
                 "fc", transB=1)
  output = graph.bn(x, "features", "features")
  proto = helper.make_model(
      helper.make_graph(
          graph.nodes, "iresnet",
          [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
          [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", model.num_features])],
          graph.initializers),
      opset_imports=[helper.make_opsetid("", _OPSET)])
  proto.ir_version = _IR_VERSION
  onnx.checker.check_model(proto)
  return proto
