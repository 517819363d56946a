"""The objectives feature decoders train on (gmia.inversion.decoder_training).

All distances are relative squared errors (gmia.inversion.priors.feature_distance), batch
means, so layers of any scale weigh alike. Each function returns (loss, {term: value}).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gmia.inversion import priors
from gmia.models.decoders import Decoder
from gmia.models.split import Network, activations, run_block

Terms = dict[str, jax.Array]


def _mean_distance(prediction: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(priors.feature_distance(prediction, target))


def aux_loss(decoder: Decoder, variables: Mapping[str, Any], network: Network,
             net_vars: Mapping[str, Any], features: jax.Array, images: jax.Array,
             feature_weight: float) -> tuple[jax.Array, Terms]:
  """Pixel MSE of decoder(features) against images f32[B, S, S, 3], plus `feature_weight` x the
  relative feature distance of the reconstruction at the decoder's layer."""
  reconstruction = decoder.apply(variables, features)
  pixel = jnp.mean(jnp.square(reconstruction - images))
  terms = {"pixel_mse": pixel}
  loss = pixel
  if feature_weight > 0:
    again = activations(network, net_vars, reconstruction, (decoder.layer,))[decoder.layer]
    terms["feature"] = _mean_distance(again, features)
    loss = loss + feature_weight * terms["feature"]
  return loss, terms


def block_loss(block: Decoder, variables: Mapping[str, Any], network: Network,
               net_vars: Mapping[str, Any], inputs: jax.Array, outputs: jax.Array,
               cycle_weight: float) -> tuple[jax.Array, Terms]:
  """One inverse block g on pairs (x = block input, y = f(x)): relative error of g(y) against x
  plus `cycle_weight` x the relative error of f(g(y)) against y."""
  reconstruction = block.apply(variables, outputs)
  terms = {"error": _mean_distance(reconstruction, inputs)}
  loss = terms["error"]
  if cycle_weight > 0:
    terms["cycle"] = _mean_distance(run_block(network, net_vars, reconstruction, block.layer),
                                    outputs)
    loss = loss + cycle_weight * terms["cycle"]
  return loss, terms


def cycle_loss(decoder: Decoder, variables: Mapping[str, Any], network: Network,
               net_vars: Mapping[str, Any], features: jax.Array,
               inputs: Mapping[str, jax.Array], cycle_weight: float,
               block_weight: float) -> tuple[jax.Array, Terms]:
  """The chained decoder on features f32[B, *feature_shape] of known inputs:
  `cycle_weight` x relative distance between the network's features of the reconstruction and
  `features`, plus `block_weight` x the mean over the chain of the relative error of every
  inverse block's output against its block's true input (`inputs`, as
  gmia.models.split.block_inputs gives them; the image for the last)."""
  outputs = decoder.apply(variables, features, intermediates=True)
  again = activations(network, net_vars, outputs[-1], (decoder.layer,))[decoder.layer]
  terms = {"cycle": _mean_distance(again, features),
           "blocks": sum(_mean_distance(out, inputs[name])
                         for out, (name, _, _) in zip(outputs, decoder.blocks)) / len(outputs),
           "pixel_mse": jnp.mean(jnp.square(outputs[-1] - inputs[decoder.blocks[-1][0]]))}
  return cycle_weight * terms["cycle"] + block_weight * terms["blocks"], terms
