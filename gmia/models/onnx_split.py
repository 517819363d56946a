"""Imported ONNX networks as split networks (gmia.models.split), cut at named tensors.

`import_split_network(path, preprocessing="sface")` gives a split.Network whose model runs a
gmia.onnx graph (imported for batch 1, run over batches with `apply_each`), so everything gmia
does with its own IResNet (feature inversion with its priors and the generator prior, decoders,
their training) does the same with any imported network:

- images: f32[B, S, S, 3] RGB in [-1, 1], the image space every gmia attack works in. The
  network's own preprocessing (a gmia.models.preprocessing preset or Preprocessing: RGB or BGR,
  (pixel - mean) / std of pixels 127.5 (x + 1) in 0..255; NCHW or NHWC as the graph's input
  is) is the model's first step, so an inversion is an image as the victim's camera would
  deliver it and the pixel priors act on real pixel values.
- `layers`: tensors of the graph where it is cut, in forward order (default: the importer's
  split_points); a layer may be named by a tensor or by the node that computes it. Activations
  of rank 4 come channels last, [B, H, W, C], as gmia's networks give them (ONNX convolutions
  are NCHW inside the graph).
- Every BatchNormalization node whose parameters are constants runs as a flax nn.BatchNorm that
  holds them (scale, bias in "params"; running mean and variance in "batch_stats"): the graph
  runs up to the BN's input, the flax module normalises it, and its output is fed back into the
  graph (OnnxNetwork.apply's feeds). DeepInversion's statistics prior (gmia.inversion.priors)
  thus sees the graph's BNs as it sees gmia's.
  A graph whose BNs were folded into its convolutions has none left: `batch_norms` is empty
  and that prior is unavailable.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import onnx

from gmia.models import split
from gmia.models.preprocessing import PRESETS, Preprocessing
from gmia.onnx import OnnxNetwork, import_onnx, load_model


class BatchNorm(NamedTuple):
  """A BatchNormalization node run as a flax nn.BatchNorm named `key`: input tensor x, output
  y, parameter tensors scale, bias, mean, var."""
  key: str
  node: str
  x: str
  y: str
  epsilon: float
  scale: str
  bias: str
  mean: str
  var: str


def _channels_last(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _channels_first(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
  """An imported graph with what the split module needs of its structure.

  net: the OnnxNetwork (batch 1); channels_first: its image input is NCHW (else NHWC);
  producers: {tensor: non-constant inputs of the node computing it} for every node that runs;
  batch_norms: the BN nodes run as flax modules, in graph order.
  """
  net: OnnxNetwork
  channels_first: bool
  producers: dict[str, tuple[str, ...]]
  batch_norms: tuple[BatchNorm, ...]

  @property
  def image_size(self) -> int:
    return self.net.input_shapes[0][2 if self.channels_first else 1]

  def needed(self, names: Sequence[str], start: str | None) -> set[str]:
    """Tensors computed on the way to `names` from the image, or from `start` when given."""
    seen, todo = set(), list(names)
    while todo:
      name = todo.pop()
      if name in seen:
        continue
      seen.add(name)
      if name != start:
        todo.extend(self.producers.get(name, ()))
    return seen

  @functools.cache
  def batch_norms_for(self, names: tuple[str, ...], start: str | None) -> tuple[BatchNorm, ...]:
    """The BNs that run on the way to `names` (from the image, or after `start`)."""
    needed = self.needed(names, start)
    return tuple(bn for bn in self.batch_norms if bn.y in needed and bn.y != start)


class OnnxSplit(nn.Module):
  """An imported graph as a split network (see the module docstring); build it with
  `import_split_network`, whose variables it reads: {"params": {"graph": {tensor: array},
  <BN key>: {"scale", "bias"}}, "batch_stats": {<BN key>: {"mean", "var"}}}.

  `__call__(images, train=False, capture=(), start=None)` follows gmia.models.split; without
  capture it returns the graph's output (one array, or a tuple for several outputs). The
  imported network is frozen: train must be False.
  """
  graph: Graph
  layers: tuple[str, ...]
  preprocessing: Preprocessing

  def network_input(self, images: jax.Array) -> jax.Array:
    """Images f32[B, S, S, 3] RGB in [-1, 1] -> the graph's input values, in its layout."""
    pixels = 127.5 * (images.astype(jnp.float32) + 1.0)
    values = ((pixels[..., ::-1] if self.preprocessing.bgr else pixels)
              - self.preprocessing.mean) / self.preprocessing.std
    return jnp.transpose(values, (0, 3, 1, 2)) if self.graph.channels_first else values

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, capture: Sequence[str] = (),
               start: str | None = None) -> Any:
    if train:
      raise ValueError(f"{self.graph.net.source}: an imported network is frozen: call it with "
                       "train=False")
    split.check_split(self.layers, capture, start)
    net = self.graph.net
    names = tuple(capture) or net.output_names
    params = self.get_variable("params", "graph")
    if start is None:
      inputs, feeds = (self.network_input(x),), {}
    else:
      inputs, feeds = (), {start: _channels_first(x)}
    for bn in self.graph.batch_norms_for(names, start):
      before = net.apply_each(params, *inputs, outputs=bn.x, feeds=feeds)
      after = nn.BatchNorm(use_running_average=True, epsilon=bn.epsilon, name=bn.key)(
          _channels_last(before))
      feeds[bn.y] = _channels_first(after)
    if not capture:
      return net.apply_each(params, *inputs, feeds=feeds)
    out = net.apply_each(params, *inputs, outputs=names, feeds=feeds)
    return {name: _channels_last(value) for name, value in zip(names, out)}


def _image_input(proto: Any, source: str, image_size: int
                 ) -> tuple[str, tuple[int, ...], bool]:
  """(name, import shape with batch 1, channels first) of the graph's one image input, at
  the declared size, else image_size."""
  initialised = {t.name for t in proto.graph.initializer}
  read = {name for node in proto.graph.node for name in node.input}
  inputs = [v for v in proto.graph.input if v.name not in initialised and v.name in read]
  if len(inputs) != 1:
    raise ValueError(f"{source}: a split network reads one image; the graph has inputs "
                     f"{[v.name for v in inputs]}")
  (value,) = inputs
  dims = [d.dim_value if d.HasField("dim_value") else None
          for d in value.type.tensor_type.shape.dim]
  if len(dims) != 4 or 3 not in (dims[1], dims[3]):
    raise ValueError(f"{source}: input {value.name!r} of shape {dims} is not an RGB image batch "
                     "(NCHW or NHWC with 3 channels)")
  channels_first = dims[1] == 3
  side = dims[2] if channels_first else dims[1]
  size = side or image_size
  if not size:
    raise ValueError(f"{source}: input {value.name!r} has a free image size: give the "
                     "preprocessing's input_size")
  shape = (1, 3, size, size) if channels_first else (1, size, size, 3)
  return value.name, shape, channels_first


def _batch_norms(proto: Any, net: OnnxNetwork) -> tuple[BatchNorm, ...]:
  """BN nodes that run and whose four parameters are float constants, with unique flax names."""
  kept = {name for name, _ in net.nodes}
  found, keys = [], set()
  for index, node in enumerate(proto.graph.node):
    name = node.name or f"#{index}"
    if node.op_type != "BatchNormalization" or name not in kept or len(node.output) != 1:
      continue
    if not all(tensor in net.params for tensor in node.input[1:5]):
      continue
    key = re.sub(r"[^0-9A-Za-z_]", "_", name)
    while key in keys or key == "graph":
      key += "_"
    keys.add(key)
    epsilon = next((onnx.helper.get_attribute_value(a) for a in node.attribute
                    if a.name == "epsilon"), 1e-5)
    found.append(BatchNorm(key, name, node.input[0], node.output[0], float(epsilon),
                           *node.input[1:5]))
  return tuple(found)


def _layers(graph: Graph, layers: Sequence[str] | None, node_outputs: dict[str, str]
            ) -> tuple[str, ...]:
  """The split tensors in forward order; each must be a cut of the graph."""
  net = graph.net
  if layers is None:
    return net.split_points
  tensors = [name if name in net.shapes else node_outputs.get(name, name) for name in layers]
  order = {tensor: position for position, tensor in enumerate(graph.producers)}
  unknown = [name for name, tensor in zip(layers, tensors) if tensor not in order]
  if unknown:
    raise ValueError(f"{net.source}: no tensor or node {unknown} computed by the graph; its "
                     f"split points are {net.split_points}")
  for tensor in tensors:
    if tensor not in net.split_points and set(net.input_names) & graph.needed(
        net.output_names, tensor):
      raise ValueError(f"{net.source}: the graph cannot be cut at {tensor!r}: a path from the "
                       f"input to the output bypasses it; cut at one of {net.split_points}")
  return tuple(sorted(set(tensors), key=order.get))


def import_split_network(model: str | os.PathLike | Any, *,
                         preprocessing: str | Preprocessing,
                         layers: Sequence[str] | None = None) -> split.Network:
  """An ONNX image network (path or onnx.ModelProto) as a split.Network.

  preprocessing: a preset of gmia.models.preprocessing.PRESETS or a Preprocessing (the layout and,
  where the graph fixes it, the image size are the graph's; input_size sets a free one);
  layers: tensor or node names to cut at (default the importer's split_points).
  """
  proto = load_model(model) if isinstance(model, (str, os.PathLike)) else model
  source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else (
      f"<graph {proto.graph.name or 'unnamed'}>")
  if isinstance(preprocessing, str):
    if preprocessing not in PRESETS:
      raise ValueError(f"unknown preprocessing preset {preprocessing!r}; choose from "
                       f"{sorted(PRESETS)} or give a Preprocessing")
    preprocessing = PRESETS[preprocessing]
  name, shape, channels_first = _image_input(proto, source, preprocessing.input_size)
  net = import_onnx(model, input_shapes={name: shape})
  kept = {node_name for node_name, _ in net.nodes}
  producers, node_outputs, readers = {}, {}, {}
  for index, node in enumerate(proto.graph.node):
    node_name = node.name or f"#{index}"
    for tensor in node.input:
      readers.setdefault(tensor, set()).add(node_name)
    if node_name in kept:
      live = tuple(t for t in node.input if t in net.shapes and t not in net.params)
      producers.update((out, live) for out in node.output)
      node_outputs.setdefault(node_name, node.output[0])
  batch_norms = _batch_norms(proto, net)
  graph = Graph(net, channels_first, producers, batch_norms)
  module = OnnxSplit(graph, _layers(graph, layers, node_outputs), preprocessing)
  bn_nodes = {bn.node for bn in batch_norms}
  moved = {t for bn in batch_norms for t in (bn.scale, bn.bias, bn.mean, bn.var)
           if readers[t] <= bn_nodes}
  variables = {"params": {"graph": {k: jnp.asarray(v) for k, v in net.params.items()
                                    if k not in moved}},
               "batch_stats": {}}
  for bn in batch_norms:
    variables["params"][bn.key] = {"scale": jnp.asarray(net.params[bn.scale]),
                                   "bias": jnp.asarray(net.params[bn.bias])}
    variables["batch_stats"][bn.key] = {"mean": jnp.asarray(net.params[bn.mean]),
                                        "var": jnp.asarray(net.params[bn.var])}
  return split.Network(module, variables, graph.image_size)
