"""ONNX graphs as pure JAX functions of (params, inputs), with shapes fixed at import.

Import walks the graph once with the given input shapes: a node whose inputs are all constants
(initialisers, Constant nodes, shapes of known tensors) is computed there and then, in numpy, so
shape arithmetic and DequantizeLinear of int8 weights become constants; the other nodes are kept,
and every tensor's shape is recorded. The float constants the kept nodes read are `params`, a flat
dict {tensor name: array}; the integer ones and those in shape-like input slots (Reshape's shape,
Resize's scales...) stay fixed inside the network, so `apply` jits, vmaps, differentiates and
shards like a flax model's apply.

Layout: inside `apply`, the data tensors between convolutions are held channels-last (NHWC...),
the layout XLA:CPU runs convolutions and fused loops fastest in (YuNet at 640 px, a photo at a
time: 15 ms of CPU time against 28 in ONNX's NCHW; SFace 9 against 13); a Transpose to or from
it becomes a cheaper permutation or none. Inputs, outputs and feeds are in ONNX's layout, as the
graph declares them; within one jit XLA cancels the transposes at these boundaries against the
caller's own.

Batch: shapes, the batch dimension included, are those of import. A graph exported for batch 1
(many hard-code it in their Reshapes) runs on [B, ...] batches with `apply_each`, a vmap over
samples that XLA turns into batched convolutions; a graph with a free batch dimension can instead
be imported at the batch size it will run at.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from gmia.onnx import ops

# Outputs of these operators end a stage: where a split network can be cut.
_STAGE_ENDS = frozenset({"Relu", "PRelu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Add",
                         "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul"})


@dataclasses.dataclass(frozen=True)
class _Node:
  name: str
  op_type: str
  inputs: tuple[str, ...]  # "" for an omitted optional input.
  outputs: tuple[str, ...]
  attrs: ops.Attributes
  op: ops.Op

  def run(self, xp: Any, args: Sequence[Any], attrs: ops.Attributes | None = None
          ) -> tuple[Any, ...]:
    out = self.op.fn(xp, self.attrs if attrs is None else attrs, *args)
    return out if isinstance(out, tuple) else (out,)


@dataclasses.dataclass(frozen=True)
class _Step:
  """How a kept node runs inside `apply`: with `attrs` (channels_last where it runs so), each
  input in `modes`: None as held, "onnx" in ONNX's layout, an int R channels-last at rank R
  (an input of lower rank is first broadcast to R dims, as ONNX broadcasts)."""
  node: _Node
  attrs: ops.Attributes
  modes: tuple[str | int | None, ...]


def _layout_plan(nodes: Sequence[_Node], shapes: Mapping[str, tuple[int, ...]],
                 constant: set[str], channels_last: bool) -> tuple[tuple[_Step, ...], set[str]]:
  """The steps of `nodes` and the tensors they hold channels-last.

  A convolution of a tensor of rank >= 3 runs channels-last; an op that can (ops.Op.layout)
  runs so when one of its data inputs is held so; the others take ONNX's layout.
  """
  held, steps = set(), []

  def rank(name):
    return len(shapes[name])

  for node in nodes:
    kind = node.op.layout if channels_last else "onnx"
    data = [(slot, name) for slot, name in enumerate(node.inputs)
            if name and slot not in node.op.static]
    out_rank = rank(node.outputs[0])
    if kind == "conv":
      cl = rank(node.inputs[0]) >= 3
    elif kind == "data":
      cl = node.inputs[0] in held
    elif kind == "elementwise":  # Held inputs of another rank would need ONNX's layout.
      ranks = {rank(name) for _, name in data if name in held}
      cl = ranks == {out_rank}
    else:
      cl = False
    modes: list[str | int | None] = [None] * len(node.inputs)
    attrs = node.attrs.replace(cl)
    for slot, name in data:
      if cl and kind == "elementwise":
        modes[slot] = out_rank
      elif cl and slot == 0:
        modes[slot] = rank(name)
      elif kind == "transpose" and name in held:
        # The permutation of the tensor held is composed with the graph's.
        perm = node.attrs.get("perm", tuple(reversed(range(rank(name)))))
        back = np.argsort(ops.channels_last_perm(rank(name)))
        attrs = node.attrs.replace(False, perm=tuple(int(back[p]) for p in perm))
      elif name not in constant:
        modes[slot] = "onnx"
    if cl:
      held.update(node.outputs)
    steps.append(_Step(node, attrs, tuple(modes)))
  return tuple(steps), held


def _to_channels_last(value: Any, rank: int) -> Any:
  """An ONNX-layout tensor of rank <= `rank`, broadcast to `rank` dims and made channels-last."""
  xp = np if isinstance(value, np.ndarray) else jnp
  value = xp.reshape(value, (1,) * (rank - np.ndim(value)) + tuple(np.shape(value)))
  return xp.transpose(value, ops.channels_last_perm(rank))


def _from_channels_last(value: Any) -> Any:
  return jnp.transpose(value, tuple(np.argsort(ops.channels_last_perm(value.ndim))))


# Constants folded at import are computed there: larger ones are refused, so that a graph
# declaring an absurd constant (ConstantOfShape of 2^40 zeros) cannot exhaust memory.
MAX_FOLDED_BYTES = 1 << 31


def load_model(path: str | os.PathLike, external_data: bool = True) -> onnx.ModelProto:
  """Reads an .onnx file (and its external data, which must lie in the file's folder).

  Whatever is wrong with the file (empty, truncated, not ONNX, external data outside its folder
  or shorter than declared, no graph) is a one-line ValueError naming it. Memory is bounded by
  the files' sizes: protobuf reads what the file holds, onnx checks external data's declared
  lengths against its file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"{path}: {'not a file' if os.path.exists(path) else 'no such file'}")
  size = os.path.getsize(path)
  if size == 0:
    raise ValueError(f"{path}: the file is empty, not an ONNX model")
  try:
    proto = onnx.load(path, load_external_data=external_data)
  except DecodeError as error:
    raise ValueError(f"{path}: not an ONNX model, or a truncated one (protobuf cannot parse "
                     f"its {size} bytes)") from error
  except (onnx.checker.ValidationError, ValueError) as error:
    raise ValueError(f"{path}: its external data is refused: "
                     f"{_first_line(error)}") from error
  except OSError as error:
    raise ValueError(f"{path}: cannot read it or its external data: "
                     f"{error.strerror or _first_line(error)}") from error
  if not proto.HasField("graph") or not proto.graph.output:
    raise ValueError(f"{path}: not an ONNX model (it holds no graph with outputs)")
  return proto


def _first_line(error: BaseException) -> str:
  return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _load(model: Any) -> tuple[Any, str]:
  if isinstance(model, (str, os.PathLike)):
    return load_model(model), os.fspath(model)
  if isinstance(model, onnx.ModelProto):
    return model, f"<graph {model.graph.name or 'unnamed'}>"
  raise TypeError(f"expected an .onnx path or an onnx.ModelProto, got {type(model).__name__}")


def _array(tensor: Any, source: str, what: str) -> np.ndarray:
  """A TensorProto as numpy; a malformed one (data shorter than its dims...) a one-line error."""
  try:
    return numpy_helper.to_array(tensor)
  except (ValueError, TypeError, KeyError, IndexError) as error:
    raise ValueError(f"{source}: {what} {tensor.name!r} of dims {list(tensor.dims)} cannot be "
                     f"read: {_first_line(error)}") from error


def _attributes(proto: Any, opset: int, source: str) -> ops.Attributes:
  def value(attribute):
    v = helper.get_attribute_value(attribute)
    if isinstance(v, bytes):
      return v.decode()
    if hasattr(v, "dims"):  # A TensorProto.
      return _array(v, source, f"attribute {attribute.name} of node {proto.name!r}:")
    if isinstance(v, list):
      return tuple(x.decode() if isinstance(x, bytes) else x for x in v)
    return v

  return ops.Attributes({a.name: value(a) for a in proto.attribute}, opset, len(proto.output))


def _opset(proto: Any, source: str) -> int:
  for entry in proto.opset_import:
    if entry.domain in ("", "ai.onnx"):
      return int(entry.version)
  raise ValueError(f"{source}: the model imports no version of the default ONNX operator set")


def _input_shapes(declared: Sequence[Any], given: Mapping[str, Sequence[int]],
                  source: str) -> dict[str, tuple[int, ...]]:
  names = [value.name for value in declared]
  unknown = sorted(set(given) - set(names))
  if unknown:
    raise ValueError(f"{source}: input_shapes names {unknown}, not graph inputs {names}")
  shapes = {}
  for value in declared:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
      raise ValueError(f"{source}: input {value.name!r} is a {kind or 'value of no type'}; "
                       "gmia.onnx takes tensors only")
    if value.type.tensor_type.elem_type == onnx.TensorProto.STRING:
      raise ValueError(f"{source}: input {value.name!r} holds strings; gmia.onnx takes numbers")
    dims = value.type.tensor_type.shape.dim
    if value.name in given:
      shape = tuple(int(d) for d in given[value.name])
      if len(shape) != len(dims):
        raise ValueError(f"{source}: input {value.name!r} has rank {len(dims)}, "
                         f"input_shapes gives {shape}")
    else:
      shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
      if -1 in shape:
        symbolic = [d.dim_param or "?" for d in dims]
        raise ValueError(f"{source}: input {value.name!r} has free dims {symbolic}: give its "
                         f"shape, input_shapes={{{value.name!r}: (...)}}")
    shapes[value.name] = shape
  return shapes


def _split_points(nodes: Sequence[_Node], inputs: Sequence[str], outputs: Sequence[str],
                  constant: set[str]) -> tuple[str, ...]:
  """Stage outputs through which every path from the inputs to the outputs passes.

  In graph order: after node i, the activations still needed later must be only its output.
  """
  last_use = {}
  for position, node in enumerate(nodes):
    for name in node.inputs:
      if name and name not in constant:
        last_use[name] = position
  for name in outputs:
    last_use[name] = len(nodes)
  alive = {name for name in inputs if name in last_use}
  points = []
  for position, node in enumerate(nodes):
    alive |= {name for name in node.outputs if name in last_use}
    alive = {name for name in alive if last_use[name] > position}
    (only,) = alive if len(alive) == 1 else (None,)
    if only in node.outputs and node.op_type in _STAGE_ENDS and only not in outputs:
      points.append(only)
  return tuple(points)


class OnnxNetwork:
  """An imported ONNX graph: `params`, tensor shapes, split points and a pure `apply`.

  Attributes: source (file or graph name, for messages); input_names, output_names (graph
  order); shapes, dtypes: {tensor name: shape / dtype} for every tensor at the import shapes;
  split_points: tensors in graph order that a split network can be cut at (each a stage output
  through which everything from the inputs to the outputs passes); params: {name: float array};
  nodes: (name, operator) of the nodes that run, in order (the folded ones are gone);
  channels_last: whether data tensors are held channels-last inside `apply`.
  """

  def __init__(self, source: str, nodes: Sequence[_Node], input_names: Sequence[str],
               output_names: Sequence[str], shapes: dict[str, tuple[int, ...]],
               dtypes: dict[str, np.dtype], params: dict[str, np.ndarray],
               fixed: dict[str, np.ndarray], channels_last: bool = True):
    self.source = source
    self.input_names, self.output_names = tuple(input_names), tuple(output_names)
    self.shapes, self.dtypes = shapes, dtypes
    self.params = params
    self.channels_last = channels_last
    self._nodes, self._fixed = tuple(nodes), fixed
    constant = set(params) | set(fixed)
    self.split_points = _split_points(self._nodes, self.input_names, self.output_names, constant)
    self._steps, self._held = _layout_plan(self._nodes, shapes, constant, channels_last)
    self._plans: dict[tuple[Any, ...], tuple[_Step, ...]] = {}

  @property
  def nodes(self) -> tuple[tuple[str, str], ...]:
    return tuple((node.name, node.op_type) for node in self._nodes)

  @property
  def input_shapes(self) -> tuple[tuple[int, ...], ...]:
    return tuple(self.shapes[name] for name in self.input_names)

  @property
  def output_shapes(self) -> tuple[tuple[int, ...], ...]:
    return tuple(self.shapes[name] for name in self.output_names)

  def _plan(self, outputs: tuple[str, ...], fed: frozenset[str],
            given_inputs: bool) -> tuple[_Step, ...]:
    """The steps that compute `outputs` from the fed tensors (and the inputs, if given)."""
    key = (outputs, fed, given_inputs)
    if key not in self._plans:
      needed = {name for name in outputs if name not in fed}
      plan = []
      for step in reversed(self._steps):
        if needed.intersection(step.node.outputs):
          plan.append(step)
          needed |= {name for name in step.node.inputs if name and name not in fed}
      missing = sorted(needed & set(self.input_names)) if not given_inputs else []
      if missing:
        raise ValueError(f"{self.source}: computing {list(outputs)} needs inputs {missing}; "
                         "pass them or feed tensors that cut them off")
      self._plans[key] = tuple(reversed(plan))
    return self._plans[key]

  def _names(self, outputs: str | Sequence[str] | None) -> tuple[str, ...]:
    if outputs is None:
      return self.output_names
    return (outputs,) if isinstance(outputs, str) else tuple(outputs)

  def _checked(self, name: str, value: Any, what: str) -> jax.Array:
    value = jnp.asarray(value)
    if value.shape != self.shapes[name]:
      raise ValueError(f"{self.source}: {what} {name!r} must have shape {self.shapes[name]} "
                       f"(fixed at import), got {value.shape}")
    dtype = jax.dtypes.canonicalize_dtype(self.dtypes[name])
    return value if value.dtype == dtype else value.astype(dtype)

  def apply(self, params: Mapping[str, Any], *inputs: Any,
            outputs: str | Sequence[str] | None = None,
            feeds: Mapping[str, Any] | None = None) -> Any:
    """Runs the graph: one array per name in `outputs` (a tuple; one array for a single name).

    params: like self.params (any float dtype, traced or not). inputs: the graph's inputs in
    order, at the import shapes (cast to the graph's dtypes), or none when `feeds` cut them off.
    outputs: tensor names to return (default the graph's outputs; a str gives one array).
    feeds: {tensor name: value} replacing the tensors the graph would compute, e.g. the features
    at a split point, so that only the nodes after them run. Under jax.jit, `outputs` must be
    static (static_argnames=("outputs",) or a closure); feeds are ordinary pytree arguments.
    """
    single = isinstance(outputs, str) or (outputs is None and len(self.output_names) == 1)
    names = self._names(outputs)
    feeds = dict(feeds or {})
    for name in (*names, *feeds):
      if name not in self.shapes:
        raise ValueError(f"{self.source}: the graph has no tensor {name!r}")
    if inputs and len(inputs) != len(self.input_names):
      raise ValueError(f"{self.source}: expected inputs {list(self.input_names)}, "
                       f"got {len(inputs)} arrays")
    env = dict(self._fixed)
    env.update(params)
    env.update({name: self._checked(name, x, "input") for name, x in zip(self.input_names, inputs)})
    for name, value in feeds.items():
      if name in self.params or name in self._fixed:
        raise ValueError(f"{self.source}: {name!r} is a constant of the graph, not a tensor to "
                         "feed")
      value = self._checked(name, value, "feed")
      env[name] = _to_channels_last(value, value.ndim) if name in self._held else value
    converted = {}

    def argument(name, mode):
      # A tensor in the layout a step takes, each conversion made once.
      held = name in self._held
      if mode is None or (mode == "onnx") != held:
        return env[name]
      if (name, mode) not in converted:
        converted[name, mode] = (_from_channels_last(env[name]) if mode == "onnx" else
                                 _to_channels_last(env[name], mode))
      return converted[name, mode]

    for step in self._plan(names, frozenset(feeds), bool(inputs)):
      values = step.node.run(jnp, [argument(name, mode) if name else None
                                   for name, mode in zip(step.node.inputs, step.modes)],
                             step.attrs)
      env.update(zip(step.node.outputs, values))
    results = tuple(argument(name, "onnx") for name in names)
    return results[0] if single else results

  def apply_each(self, params: Mapping[str, Any], *inputs: Any,
                 outputs: str | Sequence[str] | None = None,
                 feeds: Mapping[str, Any] | None = None, batch_size: int | None = None) -> Any:
    """`apply` over a batch of samples of a graph imported with batch size 1.

    Every input, feed and returned tensor of the graph has leading dim 1; here they are [B, ...]
    instead (the same B for all). batch_size: None vmaps all B samples at once (best on
    accelerators); k maps over chunks of k vmapped samples, which keeps a large network's
    activations in the caches of a CPU (measured faster there for k of 1 to 8).
    """
    feeds = dict(feeds or {})
    names = self._names(outputs)
    for name in (*self.input_names, *feeds, *names):
      if name in self.shapes and self.shapes[name][:1] != (1,):
        raise ValueError(f"{self.source}: apply_each needs a leading dim 1 on {name!r}, whose "
                         f"import shape is {self.shapes[name]}")

    def one(sample_inputs, sample_feeds):
      out = self.apply(params, *[x[None] for x in sample_inputs], outputs=outputs,
                       feeds={k: v[None] for k, v in sample_feeds.items()})
      return jax.tree_util.tree_map(lambda y: y[0], out)

    if batch_size is None:
      return jax.vmap(one)(inputs, feeds)
    # Chunks of one without lax.map's chunking, whose [B, 1, ...] reshape XLA:CPU copies.
    return jax.lax.map(lambda args: one(*args), (inputs, feeds),
                       batch_size=None if batch_size == 1 else batch_size)


def import_onnx(model: Any, input_shapes: Mapping[str, Sequence[int]] | None = None,
                channels_last: bool = True) -> OnnxNetwork:
  """Imports an ONNX model (path or onnx.ModelProto) as an OnnxNetwork.

  input_shapes: {input name: shape} for inputs whose declared shape has free dims (e.g. a
  symbolic batch) or should change (YuNet accepts any multiple of 32 px); the others keep their
  declared shapes. Declared inputs that no node reads are dropped. An operator outside
  gmia.onnx.ops.OPS, or an attribute form it lacks, is a one-line error naming the file, the
  node and the operator. channels_last: hold data tensors channels-last inside `apply` (see
  the module's docstring; False keeps ONNX's layout throughout).
  """
  proto, source = _load(model)
  graph = proto.graph
  opset = _opset(proto, source)
  values: dict[str, Any] = {t.name: _array(t, source, "initialiser") for t in graph.initializer}
  # Inputs that no node reads (some exporters leave the names of replaced weights) are dropped.
  read = {name for node in graph.node for name in node.input} | {v.name for v in graph.output}
  declared = [value for value in graph.input if value.name not in values and value.name in read]
  shapes = _input_shapes(declared, input_shapes or {}, source)
  for value in declared:
    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    values[value.name] = jax.ShapeDtypeStruct(shapes[value.name], dtype)
  kept: list[_Node] = []
  for index, node_proto in enumerate(graph.node):
    name = node_proto.name or f"#{index}"
    op_name = node_proto.op_type if node_proto.domain in ("", "ai.onnx") else (
        f"{node_proto.domain}.{node_proto.op_type}")
    if op_name not in ops.OPS:
      raise NotImplementedError(f"{source}: node {name!r}: operator {op_name} is not supported "
                                "by gmia.onnx")
    node = _Node(name, node_proto.op_type, tuple(node_proto.input), tuple(node_proto.output),
                 _attributes(node_proto, opset, source), ops.OPS[op_name])
    for slot, tensor in enumerate(node.inputs):
      if tensor and tensor not in values:
        raise ValueError(f"{source}: node {name!r} reads {tensor!r}, which nothing before it "
                         "computes")
    args = [values[tensor] if tensor else None for tensor in node.inputs]
    if node.op_type in ("Shape", "Size"):  # Only the (known) shape is read.
      args = [np.broadcast_to(np.zeros((), a.dtype), a.shape) for a in args]
    try:
      for slot in node.op.static:
        if slot < len(args) and isinstance(args[slot], jax.ShapeDtypeStruct):
          raise ValueError(f"input {slot} ({node.inputs[slot]!r}) must be known at import "
                           "(gmia.onnx fixes shapes there)")
      static = {slot: args[slot] for slot in node.op.static if slot < len(args)}
      dynamic = [jax.ShapeDtypeStruct(a.shape, jax.dtypes.canonicalize_dtype(a.dtype))
                 if isinstance(a, np.ndarray) else a
                 for slot, a in enumerate(args) if slot not in static]

      def run(*traced, node=node, static=static, count=len(args)):
        it = iter(traced)
        return node.run(jnp, [static[i] if i in static else next(it) for i in range(count)])

      # Shapes first, from a trace that allocates nothing: the node's outputs are known
      # before anything is computed, constants included.
      results = jax.eval_shape(run, *dynamic)
      if all(a is None or isinstance(a, np.ndarray) for a in args):
        size = sum(int(np.prod(r.shape)) * np.dtype(r.dtype).itemsize for r in results)
        if size > MAX_FOLDED_BYTES:
          raise ValueError(f"its constant outputs {[tuple(r.shape) for r in results]} would "
                           f"take {size} bytes, more than gmia.onnx folds ({MAX_FOLDED_BYTES})")
        if node.op.numpy:
          results = node.run(np, args)
        else:
          results = node.run(jnp, [None if a is None else jnp.asarray(a) for a in args])
        values.update((o, np.asarray(r)) for o, r in zip(node.outputs, results))
        continue
    except (ops.OpError, ValueError, TypeError) as error:
      raise ValueError(f"{source}: node {name!r} ({node.op_type}): "
                       f"{_first_line(error)}") from error
    values.update(zip(node.outputs, results))
    kept.append(node)

  params, fixed = {}, {}
  static_slots = {(id(node), slot) for node in kept for slot in node.op.static}
  for node in kept:
    for slot, tensor in enumerate(node.inputs):
      value = values.get(tensor) if tensor else None
      if isinstance(value, np.ndarray):
        floating = np.issubdtype(value.dtype, np.floating)
        target = fixed if (id(node), slot) in static_slots or not floating else params
        target[tensor] = value
  for value in graph.output:
    if value.name not in values:
      raise ValueError(f"{source}: the graph's output {value.name!r} is computed by no node")
    if isinstance(values.get(value.name), np.ndarray):
      fixed[value.name] = values[value.name]
  tensors = {k: v for k, v in values.items() if v is not None}
  return OnnxNetwork(
      source, kept, [v.name for v in declared], [v.name for v in graph.output],
      shapes={k: tuple(v.shape) for k, v in tensors.items()},
      dtypes={k: np.dtype(v.dtype) for k, v in tensors.items()}, params=params, fixed=fixed,
      channels_last=channels_last)
