"""Feature decoders: the activations of a split network at one layer -> its input image.

Any network of the split-network protocol (gmia.models.iresnet.IResNet,
gmia.models.classifiers.ResNetClassifier: a class attribute `layers` and
`__call__(x, train, capture, start)`) is a chain of blocks: block i maps the activations at
layers[i - 1] (the image for i = 0) to those at layers[i]. A decoder mirrors that chain: one
InverseBlock per block, from the split layer down to the image, each mapping a block's output
back to its input. The shapes come from the network alone (`jax.eval_shape`, no weights run),
so one builder serves every layer of every such network.

The same Decoder serves both learned attacks of gmia.inversion.decoder_training: trained end to
end on auxiliary photos (He et al., ACSAC 2019), or block by block on synthesised inputs and then
re-synced with cycle consistency (Dong et al., arXiv 2107.06304). Its parameters are a plain
dict {"invert_<layer>": block params}, so inverse blocks trained one at a time assemble into the
decoder of any deeper layer by dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# (layer, shape of the block's input, shape of its output), per-example shapes.
BlockShapes = tuple[str, tuple[int, ...], tuple[int, ...]]


def feature_shapes(model: nn.Module, variables: Mapping[str, Any],
                   image_size: int) -> dict[str, tuple[int, ...]]:
  """{layer: per-example activation shape} for every name in `model.layers`, for square
  images of side `image_size`, by shape inference only."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  layers = tuple(model.layers)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, capture=layers), variables,
                       images)
  return {name: tuple(out[name].shape[1:]) for name in layers}


def inverse_chain(layers: Sequence[str], shapes: Mapping[str, tuple[int, ...]], image_size: int,
                  layer: str) -> tuple[BlockShapes, ...]:
  """The blocks a decoder from `layer` inverts, deepest first, ending with the block that reads
  the image: ((layers[i], shape at layers[i - 1] or of the image, shape at layers[i]), ...)."""
  if layer not in layers:
    raise ValueError(f"unknown layer {layer!r}; choose from {tuple(layers)}")
  image_shape = (image_size, image_size, 3)
  index = list(layers).index(layer)
  return tuple((layers[i], tuple(shapes[layers[i - 1]]) if i else image_shape,
                tuple(shapes[layers[i]])) for i in range(index, -1, -1))


def upsampling(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
  """How many times a spatial block shrank its input per side (a power of two)."""
  scale = in_shape[0] // out_shape[0]
  if (scale < 1 or scale & (scale - 1) or in_shape[0] != scale * out_shape[0]
      or in_shape[1] != scale * out_shape[1]):
    raise ValueError(f"a block from {in_shape} to {out_shape} does not shrink its input by a "
                     "power of two per side: no inverse block for it")
  return scale


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling of f32[B, H, W, C]."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class InverseBlock(nn.Module):
  """Maps a block's output f32[B, *out_shape] back to its input f32[B, *in_shape].

  Two paths, summed. A linear one that undoes the block's resampling in one step (a transposed
  conv with kernel = stride = the block's downsampling; a dense layer when the block flattened
  its input), so a block that is nearly linear is easy to invert. And a convolutional one:
  3x3 conv, a conv after every nearest x2 upsampling (after a dense projection for flat
  outputs), `depth` more 3x3 convs, then a 3x3 conv to the input channels, initialised to
  zero so that a fresh block is its linear path (the residual-branch initialisation of deep
  ResNets). Leaky ReLU (0.2) between convs.

  Attributes:
    in_shape: [H, W, C] of the block's input.
    out_shape: [h, w, c] or [D] of the block's output.
    width: least hidden channels (the block's own channel counts when larger).
    depth: 3x3 convs at the input resolution before the output conv.
    image: the input is the image: the output goes through tanh into [-1, 1].
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  width: int = 32
  depth: int = 1
  image: bool = False

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    if len(self.in_shape) != 3:
      raise ValueError(f"inverse blocks reconstruct spatial [H, W, C] inputs, got {self.in_shape}")
    if features.shape[1:] != tuple(self.out_shape):
      raise ValueError(f"features must be f32[B, {', '.join(map(str, self.out_shape))}], got "
                       f"shape {features.shape}")
    act = lambda x: nn.leaky_relu(x, 0.2)
    height, width, channels = self.in_shape
    hidden = max(self.width, channels, self.out_shape[-1] if len(self.out_shape) == 3 else 0)
    if len(self.out_shape) == 1:
      linear = nn.Dense(height * width * channels, name="linear")(features)
      linear = linear.reshape(-1, height, width, channels)
      x = act(nn.Dense(height * width * hidden, name="project")(features))
      x = x.reshape(-1, height, width, hidden)
    else:
      scale = upsampling(self.in_shape, self.out_shape)
      linear = nn.ConvTranspose(channels, (scale, scale), strides=(scale, scale),
                                padding="VALID", name="linear")(features)
      x = act(nn.Conv(hidden, (3, 3), name="conv_in")(features))
      for step in range(scale.bit_length() - 1):
        x = act(nn.Conv(hidden, (3, 3), name=f"conv_up{step}")(_upsample2(x)))
    for step in range(self.depth):
      x = act(nn.Conv(hidden, (3, 3), name=f"conv{step}")(x))
    out = linear + nn.Conv(channels, (3, 3), kernel_init=nn.initializers.zeros,
                           name="conv_out")(x)
    return jnp.tanh(out) if self.image else out


class Decoder(nn.Module):
  """Chain of inverse blocks: features at `blocks[0]`'s layer -> the network's input.

  Attributes:
    blocks: the chain, deepest first, as `inverse_chain` gives it.
    width, depth: of every InverseBlock.
    to_image: the chain ends at the image (its last block reads the image): tanh output.
      False for a chain that stops at an intermediate layer (one inverse block trained alone).
  """
  blocks: tuple[BlockShapes, ...]
  width: int = 32
  depth: int = 1
  to_image: bool = True

  @property
  def layer(self) -> str:
    """The split layer whose activations the decoder reads."""
    return self.blocks[0][0]

  @property
  def feature_shape(self) -> tuple[int, ...]:
    return tuple(self.blocks[0][2])

  @property
  def output_shape(self) -> tuple[int, ...]:
    return tuple(self.blocks[-1][1])

  @nn.compact
  def __call__(self, features: jax.Array, intermediates: bool = False
               ) -> jax.Array | list[jax.Array]:
    """features: f32[B, *feature_shape] -> f32[B, *output_shape] (images in [-1, 1] when
    `to_image`), or with `intermediates` the output of every inverse block, in chain order (the
    reconstructed activations at each shallower layer, the image last)."""
    if not self.blocks:
      raise ValueError("a decoder needs at least one block to invert")
    x, outputs = features, []
    for index, (name, in_shape, out_shape) in enumerate(self.blocks):
      last = index == len(self.blocks) - 1
      x = InverseBlock(tuple(in_shape), tuple(out_shape), self.width, self.depth,
                       image=self.to_image and last, name=block_name(name))(x)
      outputs.append(x)
    return outputs if intermediates else x


def block_name(layer: str) -> str:
  """The parameter key of the inverse of the block that ends at `layer`."""
  return f"invert_{layer}"


def make_decoder(model: nn.Module, variables: Mapping[str, Any], image_size: int, layer: str, *,
                 width: int = 32, depth: int = 1) -> Decoder:
  """The Decoder from `layer` of `model` back to f32[B, image_size, image_size, 3] images."""
  shapes = feature_shapes(model, variables, image_size)
  return Decoder(inverse_chain(model.layers, shapes, image_size, layer), width=width, depth=depth)
