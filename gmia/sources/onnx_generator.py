"""Generators exported to ONNX (z -> image), through the gmia.onnx translator."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from gmia import parallel
from gmia.finite import check_finite
from gmia.onnx import import_onnx, load_model
from gmia.sources.base import GRADIENTS, LATENTS, Source, file_digest, latents

# The output range an image-producing last operator implies.
RANGES = {"Tanh": (-1.0, 1.0), "Sigmoid": (0.0, 1.0)}


def open_onnx(path: str, config: ml_collections.ConfigDict) -> Source:
  """A graph with one latent input (any shape; a free batch dim runs as 1 per sample) and one
  square RGB image output, NCHW or NHWC; z_i ~ N(0, I) of the input's per-sample shape."""
  proto = load_model(path)
  graph = proto.graph
  initializers = {t.name for t in graph.initializer}
  inputs = [v for v in graph.input if v.name not in initializers]
  if len(inputs) != 1 or len(graph.output) != 1:
    raise ValueError(f"{path}: a generator has one latent input and one image output, the graph "
                     f"has inputs {[v.name for v in inputs]} and outputs "
                     f"{[v.name for v in graph.output]}")
  dims = [d.dim_value if d.HasField("dim_value") else 0
          for d in inputs[0].type.tensor_type.shape.dim]
  if not dims or not all(dims[1:]):
    raise ValueError(f"{path}: the latent input {inputs[0].name!r} needs a fixed per-sample "
                     f"shape, it has {dims}")
  net = import_onnx(proto, input_shapes={inputs[0].name: (1, *dims[1:])})
  shape = net.output_shapes[0]
  nchw = len(shape) == 4 and shape[1] == 3
  if len(shape) != 4 or shape[0] != 1 or (shape[3] != 3 and not nchw) or (
      shape[2 + nchw] != shape[1 + nchw]):
    raise ValueError(f"{path}: output {net.output_names[0]!r} of shape {shape} is not one square "
                     "RGB image (NCHW or NHWC)")
  low, high = _range(config.generator_range, graph, path)
  check_finite(net.params, f"the generator onnx:{path}")
  generate = _generate(net, config.seed, tuple(dims[1:]), nchw, low, high)

  def sample(indices: np.ndarray, mesh: Mesh) -> jax.Array:
    return parallel.map_padded(functools.partial(generate, net.params), indices, mesh)

  return Source(f"onnx:{path}", "onnx", shape[2], sample, None, frozenset({LATENTS, GRADIENTS}),
                {"kind": "onnx", "sha256": file_digest(path), "range": [low, high]})


def _range(given: str, graph, path: str) -> tuple[float, float]:
  if given != "auto":
    try:
      low, high = (float(v) for v in given.split(","))
    except ValueError:
      raise ValueError(f"generator_range must be 'auto' or 'LOW,HIGH' (e.g. -1,1), got "
                       f"{given!r}") from None
    if not low < high:
      raise ValueError(f"generator_range {given!r}: LOW must be below HIGH")
    return low, high
  last = next((node.op_type for node in graph.node if graph.output[0].name in node.output), None)
  if last not in RANGES:
    raise ValueError(f"{path}: the output comes from {last}, which does not say its range: set "
                     "config.generator_range (e.g. -1,1 or 0,255)")
  return RANGES[last]


def _generate(net, seed: int, z_shape: tuple[int, ...], nchw: bool, low: float, high: float):
  @jax.jit
  def generate(params, indices):
    z = latents(seed, indices, z_shape)
    # All samples at once: convolutions inside a loop (apply_each's chunks) run 30x slower on
    # XLA:CPU for this kind of network (measured on the DCGAN of the tests).
    images = net.apply_each(params, z)
    if nchw:
      images = jnp.transpose(images, (0, 2, 3, 1))
    return jnp.clip((images - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0)
  return generate
