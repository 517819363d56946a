"""Feature decoders: the activations of a split network at one layer -> its input image.

Any split network (gmia.models.split) is a chain of blocks: block i maps the activations at
layers[i - 1] (the image for i = 0) to those at layers[i]. A decoder mirrors that chain: one
InverseBlock per block, from the split layer down to the image, each mapping a block's output
back to its input. The shapes come from the network alone (`jax.eval_shape`, no weights run),
so one builder serves every layer of every such network.

The same Decoder serves both learned attacks of gmia.inversion.decoder_training: trained end to
end on auxiliary photos (He et al., ACSAC 2019), or block by block on synthesised inputs and then
re-synced with cycle consistency (Dong et al., arXiv 2107.06304). Its variables are plain dicts
{"params": {"invert_<layer>": ...}, "stats": {"invert_<layer>": ...}}, so inverse blocks
trained one at a time assemble into the decoder of any deeper layer by dict lookup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmia.models import split

# (layer, shape of the block's input, shape of its output), per-example shapes.
BlockShapes = tuple[str, tuple[int, ...], tuple[int, ...]]


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


def activation_statistics(acts: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
  """{layer: {"mean", "std"}}: per-channel (last axis) moments of activations f32[B, ..., C]
  over every other axis. Standard deviations are floored at 1% of the layer's mean one, so a
  dead channel does not blow up what it divides."""
  stats = {}
  for name, x in acts.items():
    axes = tuple(range(x.ndim - 1))
    std = jnp.std(x, axis=axes)
    stats[name] = {"mean": jnp.mean(x, axis=axes), "std": jnp.maximum(std, 0.01 * jnp.mean(std))}
  return stats


class InverseBlock(nn.Module):
  """Maps a block's output f32[B, *out_shape] back to its input f32[B, *in_shape].

  It works in standard units: the features are standardised with the per-channel mean and std
  of the network's activations at the block's output layer, and the result de-standardised with
  those at its input layer ("stats" collection, set from data by `chain_statistics`), so the
  learning problem looks the same whatever the scale of a layer's activations.

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
    image: the input is the image: no de-standardisation; tanh into [-1, 1] instead.
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
    height, width, channels = self.in_shape

    def moments(prefix, size):
      return (self.variable("stats", f"{prefix}_mean", jnp.zeros, (size,)).value,
              self.variable("stats", f"{prefix}_std", jnp.ones, (size,)).value)

    mean, std = moments("feature", self.out_shape[-1])
    features = (features - mean) / std
    act = lambda x: nn.leaky_relu(x, 0.2)
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
    if self.image:
      return jnp.tanh(out)
    mean, std = moments("input", channels)
    return mean + std * out


class Decoder(nn.Module):
  """Chain of inverse blocks: features at `blocks[0]`'s layer -> the network's input.

  Variables: {"params", "stats"}, both {block_name(layer): ...} per inverse block; the stats
  come from `chain_statistics`.

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

  def statistics(self, layers: Sequence[str],
                 layer_stats: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, dict]:
    """The decoder's "stats" collection from {layer: {"mean", "std"}} (`activation_statistics`
    of the network's activations on training inputs); `layers` is the network's layer order,
    which names each block's input layer."""
    stats = {}
    for index, (name, _, _) in enumerate(self.blocks):
      entry = {"feature_mean": layer_stats[name]["mean"], "feature_std": layer_stats[name]["std"]}
      if not (self.to_image and index == len(self.blocks) - 1):
        position = list(layers).index(name)
        if not position:
          raise ValueError(f"the block of {name!r} reads the image: its inverse must be to_image")
        below = layer_stats[layers[position - 1]]
        entry.update(input_mean=below["mean"], input_std=below["std"])
      stats[block_name(name)] = entry
    return stats


def block_name(layer: str) -> str:
  """The parameter key of the inverse of the block that ends at `layer`."""
  return f"invert_{layer}"


def decoder_specs(network: split.Network, layers: Sequence[str]) -> dict[str, tuple]:
  """{layer: the inverse chain of its decoder} (`inverse_chain`) for a split network."""
  shapes = split.feature_shapes(network.model, network.variables, network.image_size)
  return {layer: inverse_chain(network.layers, shapes, network.image_size, layer)
          for layer in layers}


def make_decoders(specs: Mapping[str, Sequence], decoder_config: Mapping[str, int]
                  ) -> dict[str, Decoder]:
  """{layer: Decoder} from {layer: chain} (tuples, or their JSON lists from a checkpoint) and
  {"width", "depth"} of every inverse block."""
  return {layer: Decoder(tuple((name, tuple(a), tuple(b)) for name, a, b in chain),
                         width=decoder_config["width"], depth=decoder_config["depth"])
          for layer, chain in specs.items()}


def decoder_variables(network_layers: Sequence[str], decoders: Mapping[str, Decoder],
                      state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{layer: {"params", "stats"}}: what `decode` needs for each layer's decoder in a training
  state; `network_layers` is the network's layer order."""
  return {layer: {"params": state["decoders"][layer],
                  "stats": decoder.statistics(network_layers, state["layer_stats"])}
          for layer, decoder in decoders.items()}
