"""Split networks: the protocol every network that can be cut at a named layer follows.

A split network (gmia.models.iresnet.IResNet, gmia.models.classifiers.ResNetClassifier) is a
flax module with a class attribute `layers`, the names of its split points in forward order,
and `__call__(x, train=False, capture=(), start=None)`:

- `capture=()` runs the whole network;
- `capture=(layer, ...)` returns {layer: activations} and stops after the deepest of them
  (the device half of a split);
- `start=layer` takes the activations at `layer` instead of the image and runs what follows
  (the server half), so `start=layers[i - 1], capture=(layers[i],)` runs block i alone.

Everything gmia does with such a network (feature inversion, decoders, their training) goes
through the functions here, which check a request once, in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def check_split(layers: Sequence[str], capture: Sequence[str],
                start: str | None) -> tuple[int, int]:
  """Validates a split request against a network's `layers`; returns (begin, last): the index
  of `start` (-1 for the input) and of the deepest layer that has to run."""
  unknown = [name for name in (*capture, start) if name is not None and name not in layers]
  if unknown:
    raise ValueError(f"unknown layer(s) {unknown}; choose from {tuple(layers)}")
  begin = -1 if start is None else list(layers).index(start)
  if begin == len(layers) - 1:
    raise ValueError(f"nothing runs after the last layer {start!r}")
  if any(list(layers).index(name) <= begin for name in capture):
    raise ValueError(f"capture {tuple(capture)} names layers at or before start {start!r}")
  return begin, max((list(layers).index(name) for name in capture), default=len(layers) - 1)


@dataclasses.dataclass(frozen=True)
class Network:
  """A split network with its variables {"params", "batch_stats"} and the side of the square
  images f32[B, S, S, 3] in [-1, 1] it reads."""
  model: nn.Module
  variables: dict[str, Any]
  image_size: int

  @property
  def layers(self) -> tuple[str, ...]:
    return tuple(self.model.layers)

  def check_layers(self, layers: Sequence[str]) -> tuple[str, ...]:
    """`layers` in forward order; a ValueError names any the network lacks."""
    unknown = [layer for layer in layers if layer not in self.layers]
    if unknown:
      raise ValueError(f"unknown layer(s) {unknown}; the {type(self.model).__name__} splits at "
                       f"{self.layers}")
    return tuple(sorted(layers, key=self.layers.index))


def activations(network: Network, variables: Mapping[str, Any], images: jax.Array,
                layers: Sequence[str]) -> dict[str, jax.Array]:
  """{layer: f32[B, ...]} of the network in inference mode on images f32[B, S, S, 3]."""
  return network.model.apply(variables, images, train=False, capture=tuple(layers))


def run_block(network: Network, variables: Mapping[str, Any], inputs: jax.Array,
              layer: str) -> jax.Array:
  """The block that ends at `layer` alone, on its input (the image for the first block)."""
  index = network.layers.index(layer)
  start = network.layers[index - 1] if index else None
  return network.model.apply(variables, inputs, train=False, start=start, capture=(layer,))[layer]


def layers_through(network: Network, layers: Sequence[str]) -> tuple[str, ...]:
  """Every layer of the network up to the deepest of `layers`, in forward order."""
  return network.layers[:1 + max(map(network.layers.index, layers))]


def block_inputs(network: Network, acts: Mapping[str, jax.Array],
                 images: jax.Array) -> dict[str, jax.Array]:
  """{layer: input of the block ending at layer} for every block up to the deepest layer of
  `acts` (which must hold all layers before it)."""
  layers = layers_through(network, tuple(acts))
  return {layer: acts[layers[i - 1]] if i else images for i, layer in enumerate(layers)}


def feature_shapes(model: nn.Module, variables: Mapping[str, Any], image_size: int,
                   layers: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
  """{layer: per-example activation shape} for `layers` (default: all of `model.layers`) on
  square images of side `image_size`, by shape inference only (nothing runs)."""
  layers = tuple(model.layers if layers is None else layers)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, capture=layers), variables,
                       images)
  return {name: tuple(out[name].shape[1:]) for name in layers}
