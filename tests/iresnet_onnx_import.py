"""Pretrained insightface IResNet weights (ONNX) -> variables of gmia.models.iresnet.IResNet: the
check that gmia's IResNet is insightface's, layer for layer (gmia itself runs ONNX matchers through
gmia.onnx, which needs no such mapping).

The graph is read by following the data flow from the input, block by block, in the order of the
Flax model, so initializer names (numbers in exported files) do not matter. insightface's
released files (e.g. buffalo_l's w600k_r50.onnx) fold each BN that follows a conv into the conv's
weights and bias; the block-leading BNs, the head BN and the features BN stay. Either form is
accepted: a folded conv + bias becomes the plain conv followed by a BN that only adds the bias
(scale 1, mean 0, var 1 - eps), so one IResNet definition serves trained, imported and fine-tuned
models. Kernels go from OIHW to HWIO; the dense layer keeps PyTorch's (C, H, W) flatten order,
which IResNet reproduces. ONNX is protobuf: reading it runs no code from the file.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmia.models.iresnet import IResNet

EPS = 1e-5  # The eps of every BN in IResNet.
_PASS_THROUGH = ("Identity", "Dropout")


class _Graph:
  """Consumers and constants of an ONNX graph, with errors that name what is missing."""

  def __init__(self, proto: Any):
    from onnx import numpy_helper  # Optional dependency: only importing weights needs it.
    graph = proto.graph
    self.constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
      if node.op_type == "Constant":
        self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    self.consumers: dict[str, list[Any]] = {}
    for node in graph.node:
      for name in node.input:
        self.consumers.setdefault(name, []).append(node)
    inputs = [i.name for i in graph.input if i.name not in self.constants]
    if len(inputs) != 1:
      raise ValueError(f"expected one image input, the graph has {inputs}")
    self.input = inputs[0]
    # Spatial size of the NCHW input when the file fixes it (insightface's do: 112); else 0.
    dims = next(i for i in graph.input if i.name == self.input).type.tensor_type.shape.dim
    self.input_size = dims[2].dim_value if len(dims) == 4 else 0
    self.outputs = [o.name for o in graph.output]

  def constant(self, node: Any, index: int, role: str) -> np.ndarray:
    if len(node.input) <= index or node.input[index] not in self.constants:
      name = node.input[index] if len(node.input) > index else "(none)"
      raise ValueError(f"{role}: tensor {name!r} of {node.op_type} node {node.name!r} is missing "
                       "from the file's initializers (truncated or foreign file?)")
    return self.constants[node.input[index]]

  def next_nodes(self, tensor: str) -> list[Any]:
    """Nodes that consume `tensor`, looking through Identity / Dropout."""
    nodes = []
    for node in self.consumers.get(tensor, []):
      nodes += self.next_nodes(node.output[0]) if node.op_type in _PASS_THROUGH else [node]
    return nodes

  def next_node(self, tensor: str, op_type: str, role: str) -> Any:
    found = [n for n in self.next_nodes(tensor) if n.op_type == op_type]
    if len(found) != 1:
      seen = [n.op_type for n in self.next_nodes(tensor)] or "nothing (the graph ends)"
      raise ValueError(f"{role}: expected one {op_type} reading tensor {tensor!r}, found {seen}; "
                       "the file's architecture differs from the model's")
    return found[0]


def _attribute(node: Any, name: str, default: Any) -> Any:
  from onnx import helper
  for attribute in node.attribute:
    if attribute.name == name:
      return helper.get_attribute_value(attribute)
  return default


class _Writer:
  """Fills the Flax variables, checking each tensor against the model's shape as it goes."""

  def __init__(self, abstract: dict[str, Any]):
    self.abstract = abstract
    self.variables: dict[str, Any] = {}

  def put(self, collection: str, path: str, value: np.ndarray, source: str) -> None:
    expected = self.abstract[collection]
    for key in path.split("/"):
      if not isinstance(expected, dict) or key not in expected:
        raise ValueError(f"the model has no {collection}/{path} (ONNX tensor {source!r})")
      expected = expected[key]
    if tuple(value.shape) != tuple(expected.shape):
      raise ValueError(f"ONNX tensor {source!r} for {collection}/{path} has shape "
                       f"{tuple(value.shape)} but the model expects {tuple(expected.shape)}")
    target = self.variables.setdefault(collection, {})
    *parents, leaf = path.split("/")
    for key in parents:
      target = target.setdefault(key, {})
    target[leaf] = np.asarray(value, np.float32)

  def batch_norm(self, path: str, scale, bias, mean, var, source: str, use_scale: bool = True):
    if use_scale:
      self.put("params", f"{path}/scale", scale, source)
    self.put("params", f"{path}/bias", bias, source)
    self.put("batch_stats", f"{path}/mean", mean, source)
    self.put("batch_stats", f"{path}/var", var, source)


def _read_batch_norm(graph: _Graph, node: Any, role: str):
  """(scale, bias, mean, var) with var shifted so that var + 1e-5 equals the node's var + eps."""
  scale, bias, mean, var = (graph.constant(node, i, role) for i in range(1, 5))
  eps = _attribute(node, "epsilon", 1e-5)
  return scale, bias, mean, var + (eps - EPS)


def _conv_bn(graph: _Graph, writer: _Writer, conv: Any, conv_path: str, bn_path: str) -> str:
  """Imports a conv and the BN after it (or the BN folded into its bias); returns the output."""
  kernel = graph.constant(conv, 1, conv_path)
  writer.put("params", f"{conv_path}/kernel", kernel.transpose(2, 3, 1, 0), conv.input[1])
  after = graph.next_nodes(conv.output[0])
  if len(after) == 1 and after[0].op_type == "BatchNormalization":
    writer.batch_norm(bn_path, *_read_batch_norm(graph, after[0], bn_path), after[0].input[1])
    return after[0].output[0]
  bias = graph.constant(conv, 2, f"{bn_path} (folded into the conv bias)")
  ones = np.ones_like(bias)
  writer.batch_norm(bn_path, ones, bias, np.zeros_like(bias), ones - EPS, conv.input[2])
  return conv.output[0]


def _prelu(graph: _Graph, writer: _Writer, tensor: str, path: str) -> str:
  node = graph.next_node(tensor, "PRelu", path)
  slope = graph.constant(node, 1, path)
  writer.put("params", f"{path}/negative_slope", slope.reshape(-1), node.input[1])
  return node.output[0]


def _block(graph: _Graph, writer: _Writer, tensor: str, path: str, downsample: bool) -> str:
  file_downsamples = any(n.op_type == "Conv" for n in graph.next_nodes(tensor))
  if file_downsamples != downsample:
    where = ("the file starts a new stage here (a shortcut Conv reads {t!r}) but the model expects "
             "another block of the same stage" if file_downsamples else
             "the model starts a new stage here but the file has no shortcut Conv reading {t!r}")
    raise ValueError(f"{path}: {where.format(t=tensor)}; the file's architecture differs from "
                     "the model's")
  bn1 = graph.next_node(tensor, "BatchNormalization", f"{path}/bn1")
  writer.batch_norm(f"{path}/bn1", *_read_batch_norm(graph, bn1, f"{path}/bn1"), bn1.input[1])
  y = _conv_bn(graph, writer, graph.next_node(bn1.output[0], "Conv", f"{path}/conv1"),
               f"{path}/conv1", f"{path}/bn2")
  y = _prelu(graph, writer, y, f"{path}/prelu")
  y = _conv_bn(graph, writer, graph.next_node(y, "Conv", f"{path}/conv2"), f"{path}/conv2",
               f"{path}/bn3")
  shortcut = tensor
  if downsample:
    conv = graph.next_node(tensor, "Conv", f"{path}/downsample_conv (the shortcut)")
    shortcut = _conv_bn(graph, writer, conv, f"{path}/downsample_conv", f"{path}/downsample_bn")
  add = graph.next_node(y, "Add", f"{path} (residual sum)")
  if shortcut not in add.input:
    raise ValueError(f"{path}: the residual Add {add.name!r} does not add the expected shortcut "
                     f"{shortcut!r}; the file's architecture differs from the model's")
  return add.output[0]


def _head(graph: _Graph, writer: _Writer, tensor: str) -> str:
  bn = graph.next_node(tensor, "BatchNormalization", "head_bn")
  writer.batch_norm("head_bn", *_read_batch_norm(graph, bn, "head_bn"), bn.input[1])
  flat = [n for n in graph.next_nodes(bn.output[0]) if n.op_type in ("Flatten", "Reshape")]
  if len(flat) != 1:
    raise ValueError(f"head: expected a Flatten after the head BN, found "
                     f"{[n.op_type for n in graph.next_nodes(bn.output[0])]}")
  gemm = graph.next_node(flat[0].output[0], "Gemm", "fc")
  if _attribute(gemm, "alpha", 1.0) != 1.0 or _attribute(gemm, "beta", 1.0) != 1.0:
    raise ValueError(f"fc: Gemm {gemm.name!r} with alpha/beta other than 1 is not supported")
  weight = graph.constant(gemm, 1, "fc/kernel")
  kernel = weight.T if _attribute(gemm, "transB", 0) else weight
  writer.put("params", "fc/kernel", kernel, gemm.input[1])
  writer.put("params", "fc/bias", graph.constant(gemm, 2, "fc/bias"), gemm.input[2])
  bn = graph.next_node(gemm.output[0], "BatchNormalization", "features")
  scale, bias, mean, var = _read_batch_norm(graph, bn, "features")
  if np.any(scale <= 0):
    raise ValueError("features: BatchNorm1d weight must be positive (insightface fixes it to 1)")
  # The model's features BN has no scale; a scale other than 1 is absorbed into the variance.
  writer.batch_norm("features", None, bias, mean, (var + EPS) / scale**2 - EPS, bn.input[1],
                    use_scale=False)
  return bn.output[0]


def _leaf_paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def variables_from_onnx(proto: Any, model: IResNet) -> dict[str, Any]:
  """Maps a loaded onnx.ModelProto of an insightface IResNet onto `model`'s variables.

  Returns {"params": ..., "batch_stats": ...} as numpy float32 trees. Raises ValueError naming the
  first graph part or tensor that is missing or has a shape the model does not expect.
  """
  graph = _Graph(proto)
  size = graph.input_size or 112
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  writer = _Writer(abstract)
  stem = graph.next_node(graph.input, "Conv", "stem_conv")
  x = _conv_bn(graph, writer, stem, "stem_conv", "stem_bn")
  x = _prelu(graph, writer, x, "stem_prelu")
  for stage, num_blocks in enumerate(model.blocks):
    for block in range(num_blocks):
      x = _block(graph, writer, x, f"stage{stage + 1}_block{block + 1}", downsample=block == 0)
  x = _head(graph, writer, x)
  filled = set(_leaf_paths(writer.variables))
  for path in _leaf_paths(abstract):
    if path not in filled:
      raise ValueError(f"the file provides no tensor for {path}")
  if x not in graph.outputs:
    raise ValueError(f"the graph goes on after the features BN (output {x!r} is not a graph "
                     f"output {graph.outputs}); the file's architecture differs from the model's")
  return writer.variables


def load_onnx(path: str, model: IResNet) -> dict[str, Any]:
  """Reads an insightface IResNet .onnx file (e.g. w600k_r50.onnx with `iresnet("r50")`)."""
  import onnx
  try:
    proto = onnx.load(path)
  except Exception as error:  # protobuf raises DecodeError and friends for damaged files.
    raise ValueError(f"{path} is not a readable ONNX model ({type(error).__name__}: {error})") \
        from error
  return variables_from_onnx(proto, model)
